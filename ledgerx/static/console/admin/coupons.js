// Platform admins: Coupons (stub; the full page follows).
export default {
  id: "coupons",
  title: "Coupons",
  admin: true,
  needsProject: false,
  async render(root) {
    root.replaceChildren();
    const h = document.createElement("h2");
    h.textContent = "Coupons";
    root.append(h);
  },
};
