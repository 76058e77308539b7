// The tagline example as code: the same definition as functions/examples/tagline.json (a test
// keeps the two deep-equal). A short streamed generation, the console's playground demo.
// Deploy with `npx genrt-deploy examples`.
import { defineFunction } from '@genrt/sdk';

export default defineFunction<{ product: string; tone?: 'playful' | 'premium' | 'practical' }>({
  name: 'tagline',
  model: 'smollm2-135m',
  system: 'You write short, memorable product taglines: one line, no quotation marks, no hashtags.',
  prompt: 'Write a tagline for {{ product }}{% if tone %} in a {{ tone }} tone{% endif %}.',
  input_schema: {
    type: 'object',
    properties: {
      product: { type: 'string', minLength: 2, maxLength: 200, description: 'What the tagline is for' },
      tone: { type: 'string', enum: ['playful', 'premium', 'practical'] },
    },
    required: ['product'],
  },
  params: { max_tokens: 32, temperature: 0.8 },
  timeout_s: 30,
});
