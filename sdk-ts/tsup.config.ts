import { defineConfig } from 'tsup';

// Two builds of the library (ESM .js with .d.ts, CJS .cjs with .d.cts, so that each
// condition has its own types and attw finds no masquerading module), and the CLI as ESM only.
export default defineConfig([
  {
    entry: { index: 'src/index.ts' },
    format: ['esm', 'cjs'],
    dts: true,
    sourcemap: true,
    clean: true,
    target: 'node18',
    platform: 'node',
  },
  {
    entry: { cli: 'src/cli.ts' },
    format: ['esm'],
    sourcemap: true,
    target: 'node18',
    platform: 'node',
  },
]);
