// What the page tests share: Debian's Chromium through playwright-core (no downloaded browser),
// the environment they read, and their checks.
//
// env: MODULES = node_modules dir, EXPLORER = base URL, OUT = screenshot dir, CHROMIUM = binary
import { createRequire } from "node:module";
import { mkdirSync } from "node:fs";

const require = createRequire(`${process.env.MODULES}/`);
const { chromium } = require("playwright-core");
export const base = process.env.EXPLORER;
export const out = process.env.OUT;
mkdirSync(out, { recursive: true });

const failures = [];
/** Prints and counts one check. */
export function check(cond, what) {
  if (cond) console.log(`ok   ${what}`);
  else {
    console.log(`FAIL ${what}`);
    failures.push(what);
  }
}

/** A headless Chromium. */
export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"],
  });
}

/** Closes the browser and exits non-zero when a check failed. */
export async function finish(browser) {
  await browser.close();
  if (failures.length) {
    console.log(`${failures.length} check(s) failed`);
    process.exit(1);
  }
}
