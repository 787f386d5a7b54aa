// A minimal app as a user would write it: the package imported by name and bundled by Vite.
// ?model=URL picks the model, ?prompt= the prompt, ?tokens= how many greedy tokens to write out.
import { Gemma } from 'gemma-wgpu';

const params = new URLSearchParams(location.search);
const status = document.getElementById('status');
const tokens = document.getElementById('tokens');
const text = document.getElementById('text');

async function main() {
  const model = params.get('model');
  if (!model) throw new Error('add ?model=URL');
  status.textContent = 'loading';
  const gemma = await Gemma.load(model, { contextLength: Number(params.get('context') ?? 1024) });
  status.textContent = 'generating';
  const prompt = params.get('prompt') ?? 'Hello';
  for await (const piece of gemma.generate(prompt, { maxTokens: Number(params.get('tokens') ?? 16), temperature: 0 })) {
    const li = document.createElement('li');
    li.textContent = String(piece.id);
    tokens.append(li);
    text.append(piece.text);
  }
  await gemma.unload();
  status.textContent = 'done';
}

main().catch((err) => {
  status.textContent = `error ${err.code ?? ''}: ${err.message}`;
  document.body.dataset.error = err.code ?? 'error';
});
