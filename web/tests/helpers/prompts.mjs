// Prompts for the greedy comparisons, chosen so that the greedy margins (top-1 minus top-2 logit)
// of the tokens compared stay far above float noise: a mismatch means a real difference, not a
// coin flip between two nearly equal logits.

/** Gemma 4 tiny models (gemma4_tiny_*.json prompts without the literal <bos>): 16 tokens each,
 * margins >= 0.03 against a float32 noise floor of ~2e-3. */
export const TINY_PROMPTS = [
  'Once upon a time, a small boat sailed across the quiet lake at dawn.',
  'def mean(values):\n    if not values:\n        return 0.0\n    total = sum(values)\n    return total / len(values)\n\n\nprint(mean([1, 2, 3]))\n',
  '<|turn>system\nYou are a helpful assistant. Answer in one short sentence.<turn|>\n<|turn>user\nWhy is the sky blue during the day?<turn|>\n<|turn>model\n<|channel>thought\n<channel|>',
];

/**
 * Gemma 3 270M: short prompts, because the software GPU takes seconds per token on this model.
 * Native greedy margins of their first 4 tokens: >= 0.54, >= 0.34 and >= 1.4.
 */
export const GEMMA3_PROMPTS = ['The capital of France is', 'def add(a, b):\n', 'One, two, three,'];
