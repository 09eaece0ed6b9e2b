// Training machinery: optimizer, shards, checkpoints, debug states, resume, spikes and
// divergence, and the train_phd binary's handling of bad input (run as a subprocess: it must
// exit non-zero with one clear line). train_phd's GPU path: test_train_gpu.cpp.
#include <sys/stat.h>
#include <cstdio>
#include <fstream>
#include <sstream>
#include "../data/checkpoint.h"
#include "../kernels/dist.h"
#include "../kernels/outliers.h"
#include "../data/dataloader.h"
#include "train_util.h"

// ----------------------------------------------------------------------------

TEST_CASE("learning-rate schedule: linear warm-up, cosine to the final fraction") {
    AdamW o;
    o.lr_max = 1.0f; o.final_frac = 0.1f; o.warmup = 4; o.total_steps = 14;
    CHECK(learning_rate(o, 0) == doctest::Approx(0.25));
    CHECK(learning_rate(o, 3) == doctest::Approx(1.0));
    CHECK(learning_rate(o, 4) == doctest::Approx(1.0));
    CHECK(learning_rate(o, 9) == doctest::Approx(0.1 + 0.9 * 0.5 * (1 + cos(M_PI * 5 / 9))));
    CHECK(learning_rate(o, 13) == doctest::Approx(0.1));
}

TEST_CASE("AdamW: one step by hand, decay on matrices and embeddings only, clipping") {
    Config c = tiny_config("phd-2");
    size_t P = num_params(c);
    std::vector<float> p(P, 0.5f), g(P, 0.0f), m(P, 0.0f), v(P, 0.0f);
    AdamW o;
    o.weight_decay = 0.1f;
    // Zero gradient: only decoupled decay acts, and only where decay is on.
    adamw_update(c, o, p.data(), g.data(), m.data(), v.data(), 0, 0.01f, 0.0);
    for (const ParamTensor& t : param_tensors(c)) {
        INFO(t.name);
        CHECK(p[t.offset] == (t.decay ? 0.5f - 0.01f * 0.1f * 0.5f : 0.5f));
    }
    // Gradient of norm 4 everywhere scaled to norm 1: the first Adam step is lr * sign(g).
    std::fill(p.begin(), p.end(), 0.5f);
    std::fill(m.begin(), m.end(), 0.0f);
    std::fill(v.begin(), v.end(), 0.0f);
    std::fill(g.begin(), g.end(), 4.0f / std::sqrt((float)P));
    o.weight_decay = 0;
    double norm = grad_norm(g.data(), P);
    CHECK(norm == doctest::Approx(4.0));
    adamw_update(c, o, p.data(), g.data(), m.data(), v.data(), 0, 0.01f, norm);
    CHECK(p[0] == doctest::Approx(0.49).epsilon(1e-5));
    CHECK(m[0] == doctest::Approx(0.1 * 1.0 / std::sqrt((double)P)).epsilon(1e-4));  // clipped gradient 1/sqrt(P)
    // A NaN or inf norm has no clipping factor: the update stops the process (exit 1) instead
    // of passing the gradients on unclipped (min(1, NaN) is 1) or scaled by 0 (inf * 0 = NaN).
    // The child runs one OpenMP thread: the parent's thread pool does not survive the fork, and
    // an update that went ahead would wait for it forever instead of failing the check.
    for (double bad : {(double)NAN, (double)INFINITY}) {
        INFO("norm " << bad);
        CHECK(in_child([&] {
                  omp_set_num_threads(1);
                  adamw_update(c, o, p.data(), g.data(), m.data(), v.data(), 1, 0.01f, bad);
              }) == 1);
    }
}

TEST_CASE("overfitting one batch drives the loss close to zero") {
    Config c = tiny_config("phd-cswa-2-2-3", 32, 12);
    Model<float> M(c);
    init_params(c, M.params.data(), 3);
    const int B = 2, T = 12;
    auto tok = random_tokens(B * T, c.V, 10), tgt = random_tokens(B * T, c.V, 11);
    std::vector<float> m(M.params.size()), v(M.params.size());
    AdamW o;
    o.weight_decay = 0; o.total_steps = 300; o.lr_max = 1e-2f;
    float first = 0, loss = 0;
    for (int step = 0; step < 300; step++) {
        std::fill(M.grads.begin(), M.grads.end(), 0.0f);
        loss = model_forward(M, tok.data(), tgt.data(), B, T);
        if (step == 0) first = loss;
        model_backward(M, 1.0f);
        adamw_update(c, o, M.params.data(), M.grads.data(), m.data(), v.data(), step, learning_rate(o, step),
                     grad_norm(M.grads.data(), M.grads.size()));
    }
    INFO("first loss " << first << ", last " << loss);
    CHECK(first > 3.0f);
    CHECK(loss < 0.05f);
}

// ----------------------------------------------------------------------------
// Shards

// ZeRO's shards (kernels/dist.h): the ranks' pieces of each bucket tile it in rank order,
// each rank's shard is its pieces back to back, and every piece but the last rank's is a
// multiple of 4 long, so that a piece starts on a 16-byte group wherever its bucket does.
TEST_CASE("ZeRO shards: the ranks' pieces tile every bucket; all but the last are multiples of 4") {
    const std::vector<size_t> bounds = {0, 768, 768 + 2304, 768 + 2304 + 3, 768 + 2304 + 3 + 1001};
    for (int ranks : {1, 2, 3, 8}) {
        std::vector<size_t> next(bounds.begin(), bounds.end() - 1);  // where each bucket's next piece starts
        for (int r = 0; r < ranks; r++) {
            Dist d;
            d.rank = r;
            d.size = ranks;
            const Shards S = d.shards(bounds);
            size_t at = 0;
            for (int b = 0; b < S.buckets(); b++) {
                const Piece& p = S.mine[b];
                INFO("ranks " << ranks << " rank " << r << " bucket " << b);
                CHECK(p.lo == next[b]);
                CHECK(p.at == at);
                if (r + 1 < ranks) CHECK((p.hi - p.lo) % 4 == 0);
                next[b] = p.hi;
                at += p.hi - p.lo;
            }
            CHECK(S.size == at);
        }
        for (int b = 0; b + 1 < (int)bounds.size(); b++) CHECK(next[b] == bounds[b + 1]);
    }
}

TEST_CASE("shards round trip, uint16 and uint32, in contiguous (B, T+1) windows") {
    for (uint32_t big : {60000u, 70000u}) {
        std::vector<uint32_t> t(1000);
        for (size_t i = 0; i < t.size(); i++) t[i] = (uint32_t)(i * 7919 % big);
        std::string path = tmp("roundtrip.bin");
        write_shard(path.c_str(), t.data(), (int64_t)t.size(), (int)big);
        FILE* f = fopen_check(path.c_str(), "rb");
        ShardInfo s = shard_info(path.c_str(), f);
        fclose(f);
        CHECK(s.token_bytes == (big > 65535 ? 4 : 2));
        CHECK(load_shard(path.c_str(), (int)big) == t);
        DataLoader dl;
        const int B = 3, T = 50;
        dl.open(path.c_str(), B, T, (int)big);
        std::vector<int> in(B * T), tg(B * T);
        for (int batch = 0; batch < 8; batch++) {  // 6 batches fit (6*150+1 <= 1000), then it wraps
            dl.next_batch(in.data(), tg.data());
            int start = (batch % 6) * B * T;
            for (int i = 0; i < B * T; i++) {
                CHECK(in[i] == (int)t[start + i]);
                CHECK(tg[i] == (int)t[start + i + 1]);
            }
        }
    }
}

TEST_CASE("bad shards and bad flags: one clear error line, non-zero exit") {
    std::string good = make_shard("good.bin", 2000, 1), out;
    auto raw = [](const std::string& name, std::vector<int32_t> header, std::vector<uint16_t> toks, int drop = 0) {
        header.resize(256, 0);
        std::string p = tmp(name);
        std::ofstream f(p, std::ios::binary);
        f.write((const char*)header.data(), 1024);
        f.write((const char*)toks.data(), (std::streamsize)(toks.size() * 2 - drop));
        return p;
    };
    std::vector<uint16_t> ok(100, 3);
    std::vector<uint16_t> oob(100, 3);
    oob[57] = 32;
    struct Case { std::string args, expect; };
    std::vector<Case> cases = {
        {"-i " + raw("magic.bin", {20240521, 1, 100}, ok), "bad shard magic"},
        {"-i " + raw("version.bin", {20240520, 7, 100}, ok), "bad shard magic/version"},
        {"-i " + raw("trunc.bin", {20240520, 1, 100}, ok, 3), "header says 100 tokens"},
        {"-i " + raw("range.bin", {20240520, 1, 100}, oob), "token 32 at byte offset 1138 is out of range"},
        {"-i " + raw("short.bin", {20240520, 1, 20}, std::vector<uint16_t>(20, 3)), "shorter than one batch"},
        {"-i " + good + " --vocab 70000", "uint16 tokens, but the vocabulary has 70000 ids: a shard of another tokenizer"},
        {"-i " + tmp("missing_*.bin"), "no file matches"},
        {"-i " + good + " --variant phd-swa-2", "unknown variant"},
        {"-i " + good + " --variant phd-0", "K must be >= 1"},
        {"-i " + good + " --variant phd-cswa-2-4-0", "C must be >= 1"},
        {"-i " + good + " --heads 3", "D must be a multiple of H"},
        {"-i " + good + " -b x", "-b: expected an integer"},
        {"-i " + good + " -d 33", "not a multiple of B*T"},
        {"-i " + good + " --bogus 1", "unknown flag"},
        {"-i " + good + " -e " + tmp("nope.bin"), "nope.bin: cannot open"},
        {"-i " + good + " -e " + good, "bad magic"},
        {"--check-state " + good, "needs --init"},
        {"-i " + good + " --tf32 2", "--tf32: expected 0 or 1"},
        {"-i " + good + " --graph 2", "--graph: expected 0 or 1, got 2"},
        {"-i " + good + " --recompute 3", "--recompute: expected 0, 1 or 2, got 3"},
        {"-i " + good + " --device cpu --tf32 1", "--tf32 1: tensor cores are the GPU's"},
        {"-i " + good + " --device cpu --logits-chunk 64", "--logits-chunk: saves the GPU's bf16 logits, and this run is on the CPU"},
        {"-i " + good + " --skip-update-z -1", "--skip-update-z: expected a number in [0, 1e+06], got '-1'"},
        {"-i " + good + " --skip-update-z x", "--skip-update-z: expected a number in [0, 1e+06], got 'x'"},
        {"-i " + good + " --block gpt", "--block: expected llama or olmo2, got 'gpt'"},
        {"-i " + good + " --norm post", "--norm: expected pre or reordered, got 'post'"},
        {"-i " + good + " --qk-norm 2", "--qk-norm: expected 0 or 1, got 2"},
        {"-i " + good + " --z-loss 2", "--z-loss: expected a number in [0, 1], got '2'"},
        {"-i " + good + " --model gpt5", "--model: unknown model 'gpt5'"},
        {"-i " + good + " -e test/fixtures/vanilla.ckpt --block olmo2", "describe a new model; --init's checkpoint"},
    };
    for (const Case& k : cases) {
        int rc = run(std::string(kBin) + tiny_flags() + k.args + " -o " + tmp("bad-out"), &out);
        INFO(k.args << " -> " << out);
        CHECK(rc == 1);
        CHECK(out.find(k.expect) != std::string::npos);
        CHECK(out.rfind("error: ", 0) == 0);                 // the only output: one error line
        CHECK(std::count(out.begin(), out.end(), '\n') == 1);
    }
}

// ----------------------------------------------------------------------------
// --show-mask: the visibility grid, read back from the binary's output

// A grid printed by --show-mask, parsed: the legend line, the pair counts it states, and
// every cell with its row's label and its column's label (read down the header lines above
// the cell's character column) exactly as printed.
struct ShownMask {
    std::string legend;
    long visible = -1, pairs = -1;
    std::vector<std::string> row_labels, col_labels;
    std::vector<std::string> cells;  // cells[row][col]: '#' or '.'
};

static ShownMask read_mask(const std::string& out, int rows) {
    std::vector<std::string> lines;
    std::istringstream in(out);
    for (std::string l; std::getline(in, l);) lines.push_back(l);
    REQUIRE(lines.size() >= (size_t)rows + 2);  // legend, at least one header line, the rows
    ShownMask s;
    s.legend = lines[0];
    size_t colon = s.legend.find(": ");
    REQUIRE(colon != std::string::npos);
    REQUIRE(sscanf(s.legend.c_str() + colon, ": %ld of %ld pairs visible", &s.visible, &s.pairs) == 2);
    const std::vector<std::string> header(lines.begin() + 1, lines.end() - rows), grid(lines.end() - rows, lines.end());
    std::vector<size_t> cols;  // character columns of the cells, the same in every row
    for (const std::string& line : grid) {
        const size_t a = line.find_first_not_of(' '), b = line.find(' ', a);
        REQUIRE(b != std::string::npos);
        s.row_labels.push_back(line.substr(a, b - a));
        std::vector<size_t> at;
        std::string row;
        for (size_t i = b; i < line.size(); i++) {
            if (line[i] == ' ') continue;
            CHECK((line[i] == '#' || line[i] == '.'));
            at.push_back(i);
            row += line[i];
        }
        if (cols.empty()) cols = at;
        REQUIRE(at == cols);
        s.cells.push_back(row);
    }
    for (size_t j = 0; j < cols.size(); j++) {
        std::string label;
        for (const std::string& h : header)
            if (cols[j] < h.size() && h[cols[j]] != ' ') label += h[cols[j]];
        s.col_labels.push_back(label);
    }
    for (const std::string& h : header)  // nothing in the header but the column labels
        for (size_t i = 0; i < h.size(); i++)
            if (h[i] != ' ') CHECK(std::find(cols.begin(), cols.end(), i) != cols.end());
    return s;
}

static std::string label(int n, int c) { return std::to_string(n) + "." + std::to_string(c); }

// Runs --show-mask (T = 0: without -t) and checks every cell against phd_visible.
static void check_shown_mask(const char* variant, int T) {
    Config c;
    REQUIRE(parse_variant(variant, &c).empty());
    std::string out;
    int rc = run(std::string(kBin) + " --show-mask " + variant + (T ? " -t " + std::to_string(T) : ""), &out);
    if (T == 0) T = 8;
    const int K = c.K, N = T * K;
    INFO(variant << " T=" << T << ":\n" << out);
    REQUIRE(rc == 0);
    ShownMask s = read_mask(out, N);
    CHECK(s.legend.rfind(std::string(variant) + " ", 0) == 0);
    CHECK(s.legend.find(" K=" + std::to_string(K) + " ") != std::string::npos);
    CHECK(s.legend.find(" T=" + std::to_string(T) + ":") != std::string::npos);
    const bool window = c.variant == PHD_SWA || c.variant == PHD_CSWA;
    CHECK(s.legend.find(" W=" + (window ? std::to_string(c.W) : std::string("-")) + " ") != std::string::npos);
    CHECK(s.legend.find(" C=" + (c.variant == PHD_CSWA ? std::to_string(c.C) : std::string("-")) + " ") != std::string::npos);
    REQUIRE(s.col_labels.size() == (size_t)N);
    long visible = 0, wrong = 0;
    std::string first_wrong;
    for (int i = 0; i < N; i++) {
        CHECK(s.row_labels[i] == label(i / K, i % K));
        CHECK(s.col_labels[i] == label(i / K, i % K));
        for (int j = 0; j < N; j++) {
            const bool v = phd_visible(c, i / K, i % K, j / K, j % K);
            visible += v;
            if (s.cells[i][j] != (v ? '#' : '.') && wrong++ == 0) first_wrong = label(i / K, i % K) + " -> " + label(j / K, j % K);
        }
    }
    INFO("first wrong cell: query " << first_wrong);
    CHECK(wrong == 0);
    CHECK(s.visible == visible);
    CHECK(s.pairs == (long)N * N);
}

TEST_CASE("--show-mask prints phd_visible's grid, labelled, cell by cell") {
    check_shown_mask("phd-cswa-3-2-2", 4);
    check_shown_mask("phd-cswa-2-2-2", 6);
    check_shown_mask("phd-cswa-4-3-2", 16);   // two-digit positions
    check_shown_mask("phd-cswa-2-16-32", 64); // the paper's model at the most positions printed
    check_shown_mask("phd-swa-3-4", 5);
    check_shown_mask("phd-2", 3);
    check_shown_mask("naive-3", 4);
    check_shown_mask("phd-12", 2);            // two-digit copies
    check_shown_mask("phd-4", 64);            // the most rows printed, 256
    check_shown_mask("vanilla", 1);
    check_shown_mask("phd-swa-2-3", 0);       // no -t: 8 positions
}

TEST_CASE("--show-mask vanilla is the lower-triangular causal mask") {
    for (int T : {5, 12}) {
        std::string out;
        REQUIRE(run(std::string(kBin) + " --show-mask vanilla -t " + std::to_string(T), &out) == 0);
        INFO(out);
        ShownMask s = read_mask(out, T);
        CHECK(s.visible == (long)T * (T + 1) / 2);
        for (int i = 0; i < T; i++) {
            CHECK(s.row_labels[i] == label(i, 0));
            CHECK(s.col_labels[i] == label(i, 0));
            CHECK(s.cells[i] == std::string(i + 1, '#') + std::string(T - 1 - i, '.'));
        }
    }
}

TEST_CASE("--show-mask: bad input gets one clear error line naming the flag, exit 1") {
    struct Case { std::string args, expect; };
    std::vector<Case> cases = {
        {"--show-mask bogus -t 4", "--show-mask: unknown variant 'bogus'"},
        {"--show-mask phd-swa-2 -t 4", "--show-mask: unknown variant 'phd-swa-2'"},
        {"--show-mask phd-0 -t 4", "--show-mask: variant 'phd-0': K must be >= 1"},
        {"--show-mask phd-cswa-2-4-0 -t 4", "--show-mask: variant 'phd-cswa-2-4-0': C must be >= 1"},
        {"--show-mask phd-2 -t 0", "-t: expected an integer >= 1"},
        {"--show-mask phd-2 --seq -3", "--seq: expected an integer >= 1"},
        {"--show-mask vanilla -t 65", "--show-mask: T=65 positions, at most 64"},
        {"--show-mask phd-5 -t 52", "--show-mask: T*K = 52*5 = 260 rows, at most 256"},
        {"--show-mask phd-300 -t 1", "--show-mask: T*K = 1*300 = 300 rows, at most 256"},
        {"--show-mask", "--show-mask: missing value"},
    };
    std::string out;
    for (const Case& k : cases) {
        int rc = run(std::string(kBin) + " " + k.args, &out);
        INFO(k.args << " -> " << out);
        CHECK(rc == 1);
        CHECK(out.find(k.expect) != std::string::npos);
        CHECK(out.rfind("error: ", 0) == 0);
        CHECK(std::count(out.begin(), out.end(), '\n') == 1);
    }
    REQUIRE(run(std::string(kBin) + " --help", &out) == 0);
    CHECK(out.find("--show-mask VARIANT") != std::string::npos);
}

// ----------------------------------------------------------------------------
// Checkpoints, debug states, resume

TEST_CASE("checkpoint round trip and rejection of corrupt files") {
    Config c = tiny_config("phd-cswa-3-4-5");
    std::vector<float> p(num_params(c));
    init_params(c, p.data(), 9);
    std::string path = tmp("ckpt.bin");
    save_checkpoint(path.c_str(), c, p.data());
    CHECK(!exists(path + ".tmp"));
    std::vector<float> q;
    Config d = load_checkpoint(path.c_str(), &q);
    CHECK(q == p);
    CHECK(variant_name(d) == "phd-cswa-3-4-5");
    CHECK((d.V == c.V && d.Vp == c.Vp && d.L == c.L && d.D == c.D && d.H == c.H && d.Hkv == c.Hkv && d.F == c.F &&
           d.maxT == c.maxT));
    CHECK(block_name(d) == "llama");
    // The block (model.h §10) travels in the header: each option alone, and all three.
    for (const char* block : kBlocks) {
        Config b = with_block(c, block, 0.25f);
        std::vector<float> pb(num_params(b));
        init_params(b, pb.data(), 9);
        save_checkpoint(path.c_str(), b, pb.data());
        Config e = load_checkpoint(path.c_str(), &q);
        CHECK(q == pb);
        CHECK((e.qk_norm == b.qk_norm && e.norm == b.norm && e.z_loss == b.z_loss));
        CHECK(num_params(e) == num_params(c) + (b.qk_norm ? (size_t)c.L * c.qk_dim() : 0));  // g_q and g_k a layer
    }
    // A truncated copy is refused by the binary with the file named.
    std::ifstream in(path, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::string cut = tmp("ckpt_cut.bin");
    std::ofstream(cut, std::ios::binary).write(bytes.data(), (std::streamsize)bytes.size() - 4);
    std::string out;
    CHECK(run(std::string(kBin) + " -e " + cut + " -i " + make_shard("g.bin", 500, 2), &out) == 1);
    CHECK(out.find("ckpt_cut.bin: file has") != std::string::npos);
}

TEST_CASE("resume is bit-identical: N steps straight equal N/2, save, reload, N/2") {
    std::string shard = make_shard("resume.bin", 3000, 5), out;
    std::string a = tmp("resume-a"), b = tmp("resume-b");
    std::string flags = std::string(kBin) + tiny_flags() + "--variant phd-swa-2-3 -i " + shard +
                        " -j " + shard + " -x 12 -u 2 -v 5 -m 2 -s 4 -g 4 -d 64 ";
    REQUIRE(run(flags + "-n 6 -o " + a, &out) == 0);
    std::vector<std::string> straight = train_losses(a + "/log.txt");
    REQUIRE(straight.size() == 12);
    copy_checkpoint(a, b, 6);
    REQUIRE(run(flags + "-y 1 -o " + b, &out) == 0);
    CHECK(out.find("resumed from") != std::string::npos);
    std::vector<std::string> resumed = train_losses(b + "/log.txt");
    REQUIRE(resumed.size() == 6);
    for (int i = 0; i < 6; i++) CHECK(resumed[i] == straight[6 + i]);  // "step N train %.9g": exact floats
    // The final checkpoints are identical files too.
    const std::string final_a = file_bytes(a + "/model_00000012.bin");
    CHECK(final_a.size() > 1024);  // more than the header
    CHECK(final_a == file_bytes(b + "/model_00000012.bin"));
    // A resume with another shape is refused in one line that names both shapes.
    const int rc = run(flags + "-y 1 --ffn 40 -o " + b, &out);
    INFO(out);
    CHECK(rc == 1);
    CHECK(out.find("not the model asked for (phd-swa-2-3: V=32 L=2 D=32 H=4 Hkv=2 F=40") != std::string::npos);
    CHECK(out.find("checkpoint is phd-swa-2-3: V=32 L=2 D=32 H=4 Hkv=2 F=48") != std::string::npos);
}

// A checkpoint NAME.ckpt of a small model of `variant` and NAME.state, the debug state of
// its first B x T batch of `shard` (train_phd --dump-state): what the check tests start from.
static Config dump_state(const char* variant, int B, int T, const std::string& shard, const std::string& name,
                         std::string* ck, std::string* st) {
    Config c = tiny_config(variant, 32, 16);
    c.D = 32; c.F = 48;
    std::vector<float> p(num_params(c));
    init_params(c, p.data(), 4);
    *ck = tmp(name + ".ckpt");
    *st = tmp(name + ".state");
    save_checkpoint(ck->c_str(), c, p.data());
    std::string out;
    const int rc = run(std::string(kBin) + " -b " + std::to_string(B) + " -t " + std::to_string(T) + " -e " + *ck + " -i " + shard +
                           " --dump-state " + *st, &out);
    INFO(out);
    REQUIRE(rc == 0);
    return c;
}

TEST_CASE("check-state: float forward/backward against a double-precision debug state") {
    std::string shard = make_shard("state.bin", 1000, 6), out;
    for (const char* v : {"vanilla", "phd-3", "phd-swa-3-2", "phd-cswa-3-2-2", "naive-2"}) {
        std::string ck, st;
        const Config c = dump_state(v, 2, 16, shard, std::string("state_") + v, &ck, &st);
        int rc = run(std::string(kBin) + " -e " + ck + " --check-state " + st, &out);
        INFO(std::string(v) << ":\n" << out);
        CHECK(rc == 0);
        CHECK(out.find("dlayer1.w2") != std::string::npos);
        // One gradient element off by 1% of its tensor's scale must fail the check.
        DebugState s = load_debug_state(st.c_str());
        ParamTensor w2 = param_tensors(c)[1 + tensors_per_layer(c) + 8];
        float scale = 0;
        for (size_t i = 0; i < w2.size(); i++) scale = max_nan(scale, std::fabs(s.grads[w2.offset + i]));
        s.grads[w2.offset + 5] += 0.01f * scale;
        save_debug_state(st.c_str(), s);
        rc = run(std::string(kBin) + " -e " + ck + " --check-state " + st, &out);
        CHECK(rc == 1);
        CHECK(out.find("dlayer1.w2") != std::string::npos);
        CHECK(out.find("FAIL") != std::string::npos);
    }
}

// naive-4 at T=1: the K copies of the one position are identical, so attention is uniform
// over equal values and the exact gradients of wq and wk are zero; the float path leaves
// rounding noise there, which must be measured against the state's gradient scale.
TEST_CASE("check-state and compare-cpu: gradients that are exactly zero (naive-4, T=1)") {
    std::string ck, st, shard = make_shard("zero.bin", 1000, 6), out;
    const Config c = dump_state("naive-4", 2, 1, shard, "zero", &ck, &st);
    DebugState s = load_debug_state(st.c_str());
    const ParamTensor wq = param_tensors(c)[1 + tensors_per_layer(c) + 1];
    REQUIRE(wq.name == "layer1.wq");
    double wq_max = 0, g_max = 0;
    for (size_t i = 0; i < wq.size(); i++) wq_max = max_nan(wq_max, std::fabs(s.grads[wq.offset + i]));
    for (float g : s.grads) g_max = max_nan(g_max, std::fabs(g));
    REQUIRE(wq_max < 1e-12 * g_max);  // the situation this test is about
    int rc = run(std::string(kBin) + " -e " + ck + " --check-state " + st, &out);
    INFO(out);
    CHECK(rc == 0);
    CHECK(out.find("check-state: OK") != std::string::npos);
    rc = run(std::string(kEmuBin) + " -b 2 -t 1 -e " + ck + " -i " + shard + " --compare-cpu 1", &out);
    CHECK(rc == 0);
    CHECK(out.find("compare-cpu: OK") != std::string::npos);
    // The floor is not a pass for anything small: an error of 1e-5 of the largest gradient in
    // the zero tensor fails.
    s.grads[wq.offset + 3] = (float)(1e-5 * g_max);
    save_debug_state(st.c_str(), s);
    rc = run(std::string(kBin) + " -e " + ck + " --check-state " + st, &out);
    CHECK(rc == 1);
    CHECK(out.find("check-state: FAILED") != std::string::npos);
}

// A NaN or inf in the expected state (a broken reference) fails the check, as one in the
// computed result does; std::max would drop it.
TEST_CASE("check-state: a NaN or inf in the expected state fails") {
    std::string ck, st, bad = tmp("nanref-bad.state"), out;
    const Config c = dump_state("phd-2", 2, 8, make_shard("nanref.bin", 1000, 6), "nanref", &ck, &st);
    REQUIRE(run(std::string(kBin) + " -e " + ck + " --check-state " + st, &out) == 0);
    const DebugState good = load_debug_state(st.c_str());
    const size_t w2 = param_tensors(c)[1 + tensors_per_layer(c) + 8].offset;
    struct Case { const char* what; float value; std::function<float&(DebugState&)> at; const char* line; };
    for (const Case& k : {Case{"gradient NaN", NAN, [&](DebugState& s) -> float& { return s.grads[w2 + 5]; }, "dlayer1.w2"},
                          Case{"gradient inf", INFINITY, [&](DebugState& s) -> float& { return s.grads[w2 + 5]; }, "dlayer1.w2"},
                          Case{"loss NaN", NAN, [](DebugState& s) -> float& { return s.loss; }, "loss"},
                          Case{"logit NaN", NAN, [](DebugState& s) -> float& { return s.logits[7]; }, "logits"}}) {
        DebugState s = good;
        k.at(s) = k.value;
        save_debug_state(bad.c_str(), s);
        int rc = run(std::string(kBin) + " -e " + ck + " --check-state " + bad, &out);
        INFO(k.what << ":\n" << out);
        CHECK(rc == 1);
        CHECK(out.find("check-state: FAILED") != std::string::npos);
        std::string line = out.substr(out.find("\n" + std::string(k.line) + " ") + 1);
        line = line.substr(0, line.find('\n'));
        CHECK(line.find("FAIL") != std::string::npos);
        CHECK(line.find("non-finite") != std::string::npos);
    }
}

TEST_CASE("a NaN loss, or a NaN gradient norm under a finite loss, stops training with a clear error and writes no checkpoint") {
    const Config c = planted_config();
    // A NaN in E's row of token 3 (the shard has it): the loss is NaN.
    stops_at_step_0(kBin, planted_checkpoint("nan-loss.ckpt", 3 * c.D + 4, NAN), "nan-loss",
                    "error: training loss is NaN at step 0; no checkpoint written for this step");
    // A NaN in a padded row of wout: the loss is finite, the gradient NaN. Clipping cannot scale
    // it away; AdamW would put NaN into the weights and the checkpoints after them.
    stops_at_step_0(kBin, planted_checkpoint("nan-norm.ckpt", padded_logit_row(c), NAN), "nan-norm",
                    "error: gradient norm is NaN at step 0; no checkpoint written for this step");
}

TEST_CASE("one run per --out: a second run on a busy folder fails in one line naming the holder; a dead holder does not block") {
    std::string shard = make_shard("lock.bin", 2000, 9), dir = tmp("lock-out"), out;
    const std::string cmd = std::string(kBin) + one_thread_flags() + "-i " + shard + " -x 2 -v 0 -s 0 -o " + dir;
    REQUIRE(run("mkdir -p " + dir, &out) == 0);
    // The holder: a process that writes its pid into the lock file and keeps the flock (util-linux) on it
    // while its child sleeps (-o: the child does not hold the lock too).
    REQUIRE(run("sh -c 'echo $$ > " + dir + "/train_phd.lock; exec flock -o " + dir + "/train_phd.lock sleep 60' >/dev/null 2>&1 & "
                "while flock -n " + dir + "/train_phd.lock true; do sleep 0.05; done; cat " + dir + "/train_phd.lock",
                &out) == 0);
    const std::string holder = out.substr(0, out.find('\n'));
    REQUIRE(!holder.empty());
    int rc = run(cmd, &out);
    INFO(out);
    CHECK(rc == 1);
    CHECK(out.find("error: --out " + dir + ": another run is using this folder (pid " + holder + ")") != std::string::npos);
    CHECK(std::count(out.begin(), out.end(), '\n') == 1);
    CHECK(!exists(dir + "/model_00000002.bin"));
    REQUIRE(run("pkill -P " + holder + "; kill " + holder + "; while ! flock -n " + dir + "/train_phd.lock true; do sleep 0.05; done", &out) == 0);
    rc = run(cmd, &out);
    INFO(out);
    CHECK(rc == 0);
    CHECK(exists(dir + "/model_00000002.bin"));
}

TEST_CASE("training through ./train_phd, the binary make builds, lowers the loss and leaves no temporary files") {
    std::string shard = make_shard("learn.bin", 20000, 8), dir = tmp("learn-out"), out;
    int rc = run(std::string(kProductBin) + tiny_flags() + "--variant phd-cswa-2-4-8 -i " + shard + " -x 60 -l 3e-3 -v 0 -s 0 -o " + dir, &out);
    REQUIRE(rc == 0);
    std::vector<std::string> l = train_losses(dir + "/log.txt");
    REQUIRE(l.size() == 60);
    float first = std::stof(l.front().substr(l.front().rfind(' '))), last = std::stof(l.back().substr(l.back().rfind(' ')));
    INFO("first " << first << " last " << last);
    CHECK(last < first - 1.0f);
    CHECK(exists(dir + "/model_00000060.bin"));
    CHECK(!exists(dir + "/model_00000060.bin.tmp"));
    CHECK(!exists(dir + "/state_00000060.bin.tmp"));
}

TEST_CASE("generation: streams tokens and reports the cache; bad prompts get one clear error") {
    Config c = tiny_config("phd-cswa-2-4-3", 32, 16);
    std::vector<float> p(num_params(c));
    init_params(c, p.data(), 4);
    std::string ck = tmp("gen.ckpt"), out;
    save_checkpoint(ck.c_str(), c, p.data());
    std::string bin = std::string(kBin) + " -e " + ck + " ";
    REQUIRE(run(bin + "--generate 6 --prompt-ids '1, 2 3' --temperature 0", &out) == 0);
    INFO(out);
    // 3 prompt + 5 fed back (the 6th is only printed): 8 originals + the hidden tokens of chunk 6..8 so far (2)
    CHECK(out.find("KV cache after 8 tokens: 10 entries/layer") != std::string::npos);
    std::string again;
    REQUIRE(run(bin + "--generate 6 --prompt-ids '1, 2 3' --temperature 0", &again) == 0);
    CHECK(again.substr(0, again.find('\n')) == out.substr(0, out.find('\n')));  // greedy: the same tokens
    struct Case { std::string args, expect; };
    std::vector<Case> cases = {
        {"--generate 10 --prompt-ids '1 2 3 4 5 6 7'", "exceed the model's max sequence length 16"},
        {"--generate 2 --prompt-ids ' , '", "the prompt is empty"},
        {"--generate 2 --prompt-ids '1 32'", "token 32 is out of range"},
        {"--generate 2 --prompt-ids '1 x'", "--prompt-ids: expected an integer >= 0, got 'x'"},
        {"--generate 2 --variant phd-cswa-3-4-3", "does not match the checkpoint"},
        {"--generate 2 --prompt hello", "text prompts need --tokenizer"},
    };
    for (const Case& k : cases) {
        int rc = run(bin + k.args, &out);
        INFO(k.args << " -> " << out);
        CHECK(rc == 1);
        CHECK(out.find(k.expect) != std::string::npos);
        CHECK(std::count(out.begin(), out.end(), '\n') == 1);
    }
    CHECK(run(std::string(kBin) + " --generate 3", &out) == 1);
    CHECK(out.find("--generate: needs --init") != std::string::npos);
}

// ----------------------------------------------------------------------------
// MFU's FLOPs, spikes and divergence (kernels/outliers.h, the step line)

TEST_CASE("train_phd prints the cost model: FLOPs per original token and visible pairs") {
    std::string shard = make_shard("cost.bin", 2000, 4), out;
    REQUIRE(run(std::string(kBin) + one_thread_flags() + "--variant phd-cswa-3-4-5 -i " + shard + " -x 1 -v 0 -s 0 -o " + tmp("cost"), &out) == 0);
    Config c;  // tiny_flags()'s model
    REQUIRE(parse_variant("phd-cswa-3-4-5", &c).empty());
    c.V = 32; c.Vp = pad_vocab(32); c.L = 2; c.D = 32; c.H = 4; c.Hkv = 2; c.F = 48; c.maxT = 16;
    const size_t at = out.find("cost model: ");
    REQUIRE(at != std::string::npos);
    double flops = 0, pairs = 0;
    REQUIRE(sscanf(out.c_str() + at, "cost model: %lf FLOPs per original token, %lf visible", &flops, &pairs) == 2);
    CHECK(flops == doctest::Approx(model_flops_per_token(c, 16)).epsilon(1e-8));  // printed to 9 digits
    CHECK(pairs == visible_pairs(c, 16));
}

TEST_CASE("model FLOPs per token: model.h §7's cost model over the visible pairs") {
    const int T = 9;
    for (const char* v : {"vanilla", "phd-3", "naive-2"}) {
        const Config c = tiny_config(v);
        const int K = c.K;
        // Visible pairs in closed form from model.h §4: causal over T rows (vanilla) or
        // K*T rows (naive); phd-K: the originals' causal T(T+1)/2, each hidden copy (n, c)
        // the originals 0..n and copies 1..c of its own group.
        const double pairs = c.variant == NAIVE ? K * T * (K * T + 1) / 2.0 : K * T * (T + 1) / 2.0 + T * K * (K - 1) / 2.0;
        INFO(v);
        CHECK(visible_pairs(c, T) == pairs);
        const double layer = 2.0 * c.D + (double)c.qkv_dim() * c.D + (double)c.D * c.H * c.hd() + 3.0 * c.F * c.D;
        const double want = 6 * (c.L * layer * K + (double)c.D * c.V) + 12.0 * c.L * c.H * c.hd() * pairs / T;
        CHECK(model_flops_per_token(c, T) == doctest::Approx(want).epsilon(1e-12));
    }
}

TEST_CASE("outlier detector: a steady window, then a spike; z against the last 128 values") {
    OutlierDetector d;
    std::vector<double> seen;  // every value, to score by hand
    Rng rng{7};
    auto steady = [&] { return 3.0 + 0.02 * (rng.uniform() - 0.5); };  // uniform: |z| <= sqrt(3) in the limit
    for (int i = 0; i < OutlierDetector::kMinSamples; i++) {
        seen.push_back(steady());
        CHECK(std::isnan(d.update(seen.back())));  // too few values to score
    }
    // Past the window's length, so that the ring has wrapped: steady values score low, and
    // every score is the one computed by hand over the last kWindow values.
    auto by_hand = [&](double x) {
        const size_t n = std::min(seen.size(), (size_t)OutlierDetector::kWindow);
        double mean = 0, var = 0;
        for (size_t i = seen.size() - n; i < seen.size(); i++) mean += seen[i] / n;
        for (size_t i = seen.size() - n; i < seen.size(); i++) var += (seen[i] - mean) * (seen[i] - mean) / n;
        return (x - mean) / std::sqrt(var);
    };
    for (int i = 0; i < 300; i++) {
        const double x = steady(), want = by_hand(x), z = d.update(x);
        seen.push_back(x);
        CHECK(std::fabs(z) < 2.5);
        CHECK(z == doctest::Approx(want).epsilon(1e-9));
    }
    CHECK(d.window.size() == (size_t)OutlierDetector::kWindow);
    // A loss 0.1 above steady values of std ~0.006 (0.02/sqrt(12)): z ~ 17, a spike.
    double want = by_hand(3.1), z = d.update(3.1);
    seen.push_back(3.1);
    INFO("spike z " << z);
    CHECK(z > 2 * OutlierDetector::kFlagZ);
    CHECK(z == doctest::Approx(want).epsilon(1e-9));
    // The spike joined the window (as llm.c): a steady value after it still scores low, and a
    // fall is negative, never a spike.
    CHECK(std::fabs(d.update(3.0)) < 2.5);
    CHECK(d.update(2.9) < -5);
    // A non-finite value gets no score and stays out of the window.
    const std::vector<double> before = d.window;
    CHECK(std::isnan(d.update(NAN)));
    CHECK(std::isnan(d.update(INFINITY)));
    CHECK(d.window == before);
    // All-equal values: std 0, a different value is infinitely far, an equal one not at all.
    OutlierDetector flat;
    for (int i = 0; i < OutlierDetector::kMinSamples; i++) flat.update(1.0);
    CHECK(flat.update(1.0) == 0.0);
    CHECK(flat.update(1.5) == INFINITY);
}

TEST_CASE("divergence check: true once, after kSteps losses in a row above twice the first") {
    DivergenceCheck d;
    CHECK(!d.update(3.0));
    CHECK(!d.update(100.0));  // a lone spike is not divergence
    CHECK(!d.update(2.5));
    for (int i = 0; i < DivergenceCheck::kSteps - 1; i++) CHECK(!d.update(6.5));
    CHECK(!d.update(5.9));    // not above 2 x 3: the run of losses above is broken
    for (int i = 0; i < DivergenceCheck::kSteps - 1; i++) CHECK(!d.update(7.0));
    CHECK(d.update(7.0));     // the kSteps-th in a row
    for (int i = 0; i < 20; i++) CHECK(!d.update(1000.0));  // said once
}

TEST_CASE("a run at a huge learning rate warns once that its loss ran away; a healthy run does not") {
    std::string shard = make_shard("diverge.bin", 3000, 12), out;
    const std::string run_flags = std::string(kBin) + one_thread_flags() + "-i " + shard + " -x 30 -v 0 -s 0 ";
    REQUIRE(run(run_flags + "-l 10 -o " + tmp("diverge"), &out) == 0);  // it trains on: a warning, not an error
    INFO(out);
    size_t n = 0;
    for (size_t at = out.find("warning: "); at != std::string::npos; at = out.find("warning: ", at + 1)) n++;
    CHECK(n == 1);
    CHECK(out.find("is far above its start") != std::string::npos);
    CHECK(out.find("the learning rate (-l 10) may be too high") != std::string::npos);
    REQUIRE(run(run_flags + "-l 3e-3 -o " + tmp("no-diverge"), &out) == 0);
    CHECK(out.find("warning") == std::string::npos);
}


TEST_CASE("--skip-update-z: a skipped step leaves parameters and moments as they were, the schedule moves on") {
    std::string shard = make_shard("skip.bin", 3000, 5), out, plain_out;
    const std::string flags = std::string(kBin) + one_thread_flags() + "-i " + shard + " -x 30 -l 3e-3 -v 0 -s 0 -n 1 ";
    const std::string skip = tmp("skip"), plain = tmp("skip-plain"), never = tmp("skip-never");
    // A low threshold, so that some step of 30 is skipped (z > 1 is common; the first 16 are never scored).
    REQUIRE(run(flags + "--skip-update-z 1 -o " + skip, &out) == 0);
    REQUIRE(run(flags + "-o " + plain, &plain_out) == 0);
    INFO(out);
    const std::vector<std::string> lines = step_lines(out), plain_lines = step_lines(plain_out);
    REQUIRE((lines.size() == 31 && plain_lines.size() == 31));
    auto field = [](const std::string& line, const char* name) {  // "| lr 1.00e-03 |" -> "1.00e-03"
        const size_t at = line.find(std::string("| ") + name + " ") + strlen(name) + 3;
        return line.substr(at, line.find(' ', at) - at);
    };
    auto path = [](const std::string& dir, const char* kind, int step) {
        char name[64];
        snprintf(name, sizeof name, "/%s_%08d.bin", kind, step);
        return dir + name;
    };
    auto model = [&](const std::string& dir, int step) { return file_bytes(path(dir, "model", step)); };
    auto moments = [&](const std::string& dir, int step) { return file_bytes(path(dir, "state", step), 1024); };  // AdamW m, v
    int skipped = 0, first_skip = 0;
    for (int step = 1; step <= 30; step++) {
        INFO(lines[step]);
        CHECK(field(lines[step], "lr") == field(plain_lines[step], "lr"));  // the schedule ignores skips
        if (lines[step].find("| update skipped") == std::string::npos) continue;
        skipped++;
        first_skip = first_skip ? first_skip : step;
        CHECK(step > OutlierDetector::kMinSamples);
        CHECK(lines[step].find(" SPIKE") != std::string::npos);  // a skipped step is always flagged
        CHECK(model(skip, step) == model(skip, step - 1));
        CHECK(moments(skip, step) == moments(skip, step - 1));
    }
    REQUIRE(skipped > 0);
    CHECK(out.find("skipped " + std::to_string(skipped) + " of 30 updates (--skip-update-z 1)") != std::string::npos);
    // Up to the first skip, the run is the plain one, bit for bit; an update that is not
    // skipped changes the parameters.
    CHECK(model(skip, first_skip - 1) == model(plain, first_skip - 1));
    CHECK(model(plain, first_skip) != model(plain, first_skip - 1));
    // A threshold nothing reaches changes nothing: the same log and files as no flag at all.
    REQUIRE(run(flags + "--skip-update-z 1e6 -o " + never, &out) == 0);
    CHECK(out.find("skipped 0 of 30 updates") != std::string::npos);
    CHECK(file_bytes(never + "/log.txt") == file_bytes(plain + "/log.txt"));
    CHECK(model(never, 30) == model(plain, 30));
    CHECK(moments(never, 30) == moments(plain, 30));
}
