// node validate.mjs FILE…: parses each AsyncAPI document with @asyncapi/parser, prints its
// diagnostics and one "FILE: parsed …" or "FILE: not valid" line; exit status = files not valid.
import { Parser } from '@asyncapi/parser';
import { readFileSync } from 'fs';
const parser = new Parser();
let bad = 0;
for (const path of process.argv.slice(2)) {
  const { document, diagnostics } = await parser.parse(readFileSync(path, 'utf8'));
  for (const d of diagnostics) console.log(path, d.severity, d.code, JSON.stringify(d.path), d.message);
  const errors = diagnostics.filter(d => d.severity === 0);
  if (document && !errors.length) {
    console.log(`${path}: parsed: ${document.channels().length} channels, ${document.operations().length} operations, ${document.messages().length} messages`);
  } else {
    console.log(`${path}: not valid`);
    bad += 1;
  }
}
process.exit(bad);
