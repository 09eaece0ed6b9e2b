// Reference ids for the tokenizer test: node data/tiktoken_ids.cjs ENCODING IN OUT writes the
// ids that ENCODING (gpt2, cl100k_base) gives the UTF-8 text file IN, as little-endian uint32,
// to OUT, using the npm package tiktoken (OpenAI's tokenizer core compiled to WASM). Special
// tokens are plain text here.
const fs = require("fs");
const path = require("path");
const { get_encoding } = require(path.join(__dirname, "cache/node_modules/tiktoken"));
const enc = get_encoding(process.argv[2]);
const ids = enc.encode(fs.readFileSync(process.argv[3], "utf8"), [], []);
fs.writeFileSync(process.argv[4], Buffer.from(new Uint32Array(ids).buffer));
enc.free();
