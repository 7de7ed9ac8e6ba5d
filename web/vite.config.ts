import { defineConfig } from "vite";

// The page is served by the edge at `/` (services/edge/page_server.py): plain static files, no inline
// scripts, so that its Content-Security-Policy can say `script-src 'self'`.
export default defineConfig({
  base: "/",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2022",
    // No inlined assets: every file under /assets/ is a file of its own.
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
  },
});
