// Platform admins: Plans (stub; the full page follows).
export default {
  id: "plans",
  title: "Plans",
  admin: true,
  needsProject: false,
  async render(root) {
    root.replaceChildren();
    const h = document.createElement("h2");
    h.textContent = "Plans";
    root.append(h);
  },
};
