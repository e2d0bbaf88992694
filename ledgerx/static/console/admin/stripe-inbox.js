// Platform admins: Stripe inbox (stub; the full page follows).
export default {
  id: "stripe-inbox",
  title: "Stripe inbox",
  admin: true,
  needsProject: false,
  async render(root) {
    root.replaceChildren();
    const h = document.createElement("h2");
    h.textContent = "Stripe inbox";
    root.append(h);
  },
};
