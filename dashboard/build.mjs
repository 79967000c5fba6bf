// Builds the dashboard into dashboard/dist/ (git-ignored): `node dashboard/build.mjs`, run by
// `make setup` whenever a source changes. esbuild bundles the TypeScript (no type check here:
// `make typecheck` runs tsc); the diagram (elkjs) and the editor (CodeMirror) are split into chunks
// loaded on the pages that need them. Every file under assets/ has a content hash in its name, so
// the server can cache them for a year; index.html names the current ones and is never cached.
import { build } from "esbuild";
import { createHash } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "dist");
rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, "assets"), { recursive: true });

const result = await build({
  entryPoints: [join(here, "src", "main.ts")],
  bundle: true,
  splitting: true,
  format: "esm",
  target: ["es2022"],
  minify: true,
  sourcemap: false,
  legalComments: "linked",
  outdir: join(out, "assets"),
  entryNames: "[name]-[hash]",
  chunkNames: "chunk-[hash]",
  metafile: true,
  logLevel: "warning",
});

const main = Object.entries(result.metafile.outputs).find(([, o]) => o.entryPoint)[0];
const css = readFileSync(join(here, "src", "style.css"));
const cssName = `style-${createHash("sha256").update(css).digest("hex").slice(0, 10)}.css`;
writeFileSync(join(out, "assets", cssName), css);
const html = readFileSync(join(here, "src", "index.html"), "utf8")
  .replace("%STYLE%", `dashboard/assets/${cssName}`)
  .replace("%SCRIPT%", `dashboard/assets/${basename(main)}`);
writeFileSync(join(out, "index.html"), html);
// Pre-compressed copies: the server's FileResponse sends them to browsers that accept gzip.
for (const name of readdirSync(join(out, "assets"))) {
  if (/\.(js|css)$/.test(name)) writeFileSync(join(out, "assets", `${name}.gz`), gzipSync(readFileSync(join(out, "assets", name)), { level: 9 }));
}
const sizes = Object.entries(result.metafile.outputs).map(([f, o]) => `${basename(f)} ${(o.bytes / 1024).toFixed(0)} KiB`);
console.log(`dashboard built: ${sizes.join(", ")}`);
