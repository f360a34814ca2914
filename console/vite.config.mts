// The console's build: `npm run build:console` at the repository root writes console/dist/, which
// the edge serves at /console/ (services/edge/console.py). Assets are content-hashed under
// assets/ (the edge caches them for a year); nothing is fetched from anywhere but the edge.
import preact from "@preact/preset-vite";
import { defineConfig } from "vite";

const root = decodeURIComponent(new URL(".", import.meta.url).pathname);

export default defineConfig({
  root,
  base: "/console/",
  plugins: [preact({ prerender: { enabled: false } })],
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsDir: "assets",
    target: "es2022",
    sourcemap: false,
  },
  server: {
    // `npx vite --config console/vite.config.ts` during development: the edge answers the API.
    proxy: {
      "/v1": { target: "http://127.0.0.1:8080", ws: true },
      "/oauth2": "http://127.0.0.1:8080",
      "/.well-known": "http://127.0.0.1:8080",
    },
  },
});
