import { defineConfig } from 'vite';

// build.rs sets NEPHILIA_UI_OUT_DIR to a directory under cargo's OUT_DIR, so concurrent
// cargo builds with different target directories never write the same files.
export default defineConfig({
  base: '/',
  build: {
    outDir: process.env.NEPHILIA_UI_OUT_DIR ?? 'dist',
    emptyOutDir: true,
    chunkSizeWarningLimit: 1024,
    reportCompressedSize: false,
  },
  server: {
    // `npm run dev` against a local nephilia-server on its default port.
    proxy: { '/api': 'http://127.0.0.1:9696' },
  },
});
