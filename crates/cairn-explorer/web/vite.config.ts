import { defineConfig } from "vite";

// Built offline from the lockfile into dist/ (committed), which the Rust binary embeds.
export default defineConfig({
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2022",
    modulePreload: { polyfill: false },
    reportCompressedSize: false,
  },
});
