// Platform admins: Revenue (stub; the full page follows).
export default {
  id: "revenue",
  title: "Revenue",
  admin: true,
  needsProject: false,
  async render(root) {
    root.replaceChildren();
    const h = document.createElement("h2");
    h.textContent = "Revenue";
    root.append(h);
  },
};
