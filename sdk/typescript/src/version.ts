/** The SDK's version: the LedgerX server version it was generated for (a test checks both agree). */
export const VERSION = "0.1.0";
