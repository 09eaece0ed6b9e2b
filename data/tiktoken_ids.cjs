// Reference ids for the tokenizer test: node data/tiktoken_ids.cjs IN OUT writes the GPT-2
// ids of the UTF-8 text file IN, as little-endian uint32, to OUT, using the npm package
// tiktoken (OpenAI's tokenizer core compiled to WASM). Special tokens are plain text here.
const fs = require("fs");
const path = require("path");
const { get_encoding } = require(path.join(__dirname, "cache/node_modules/tiktoken"));
const enc = get_encoding("gpt2");
const ids = enc.encode(fs.readFileSync(process.argv[2], "utf8"), [], []);
fs.writeFileSync(process.argv[3], Buffer.from(new Uint32Array(ids).buffer));
enc.free();
