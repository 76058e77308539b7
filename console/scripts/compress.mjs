// Writes a gzip twin of every text file of the build (dist/**/*.{html,js,css,svg,json}): the
// genrt binary embeds both and sends the twin to browsers that accept gzip, so the server needs
// no compression code of its own (its JSON and token streams are sent uncompressed on purpose).
// Prints the compressed size of what a first load fetches, which the browser tests hold under
// 200 KB.
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { gzipSync, constants } from 'node:zlib';

const dist = new URL('../dist/', import.meta.url).pathname;
const text = /\.(html|js|css|svg|json|txt)$/;
let raw = 0;
let compressed = 0;
const walk = (dir) => {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) walk(path);
    else if (text.test(name)) {
      const body = readFileSync(path);
      const gz = gzipSync(body, { level: constants.Z_BEST_COMPRESSION });
      writeFileSync(`${path}.gz`, gz);
      raw += body.length;
      compressed += gz.length;
      console.log(`  ${relative(dist, path).padEnd(40)} ${body.length} B, ${gz.length} B gzip`);
    }
  }
};
walk(dist);
console.log(`console: ${raw} B, ${compressed} B gzip in all`);
