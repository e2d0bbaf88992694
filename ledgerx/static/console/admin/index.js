// The platform-admin pages of the console (the shell shows them to platform admins only).
import revenue from "./revenue.js";
import stripeInbox from "./stripe-inbox.js";
import coupons from "./coupons.js";
import plans from "./plans.js";

export default [revenue, stripeInbox, coupons, plans];
