import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    environment: 'node',
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // Every file starts its own `python app.py`; one at a time keeps a small machine responsive.
    fileParallelism: false,
  },
});
