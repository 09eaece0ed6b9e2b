// train_phd: train, evaluate, sample from and check a PHD-Transformer.
//
// One training step, top to bottom (train()):
//   for each micro-batch: tokens (B, T) -> forward (every token fed K times, loss on the
//   last copy) -> backward (gradients added up, scaled by 1/micro-batches); then the global
//   gradient norm, clipping to 1.0, the learning-rate schedule, AdamW (skipped when the loss
//   or norm is a spike and --skip-update-z asks; kernels/outliers.h). The step line shows the
//   loss, norm, lr, time, tokens/s, on a GPU the MFU, and flags spikes.
// Under mpirun (kernels/dist.h) each rank runs its own micro-batches; then a reduce-scatter
// gives each rank its shard of the summed gradients, AdamW updates that shard (ZeRO-1: a rank
// keeps only its shard's moments) and an all-gather gives every rank all the parameters.
// The step runs on an engine (kernels/engine.h): the CPU model, or the GPU model when built by
// nvcc (or by g++ with PHD_EMULATE_GPU, the CUDA emulation the tests use).
#include <omp.h>
#include <algorithm>
#include <chrono>
#include <sstream>
#include <string>
#include <vector>
#include "data/checkpoint.h"
#include "data/tokenizer.h"
#ifdef PHD_PCRE2
#include "data/bpe.h"  // BPE text prompts
#endif
#include "data/dataloader.h"
#include "data/eval.h"
#include "kernels/cpu_decode.h"
#include "kernels/engine.h"
#include "kernels/generate.h"
#include "kernels/outliers.h"
#include "kernels/show_mask.h"
#include "kernels/step_compare.h"
#include "model.h"
#include "kernels/utils.h"

struct Args {
    std::string train_pattern, val_pattern, out_dir = "out", init, device = "auto";
    std::string check_state, dump_state, tokenizer, prompt, prompt_ids, show_mask, dtype = "auto";
    std::string variant = "phd-cswa-2-16-32";
    std::vector<std::string> evals;  // --eval files
    int eval_scores = 0;
    // The model's shape and block: 0 / "" where not given, then from --model, then the defaults.
    int V = 0, L = 0, D = 0, H = 0, Hkv = 0, F = 0, maxT = 0;
    std::string model, block, norm;
    int qk_norm = -1;
    float z_loss = -1;
    int B = 4, T = 64, total_batch = 0, steps = 100, warmup = 0;
    int val_every = 20, val_steps = 10, sample_every = 50, sample_tokens = 16, ckpt_every = 0;
    int resume = 0, threads = 0, generate = 0, top_k = 0, tf32 = 0, compare_cpu = 0;
    int samples = 1;  // --generate's continuations, decoded together
    int overlap = 1;  // the GPU's gradient reduction during the backward (kernels/engine.h)
    int graph = 1;    // one GPU: each training step one CUDA graph (kernels/engine.h)
    int recompute = 0;  // what the backward recomputes (model.h's Activations::point)
    int logits_chunk = 0;  // GPU bf16: rows of logits at once (0: the whole batch)
    uint64_t seed = 1337;
    float lr = 1e-3f, final_frac = 0.1f, weight_decay = 0.1f, check_tol = -1, temperature = 1.0f;
    float skip_update_z = 0;  // 0: never skip an update
    bool variant_given = false, T_given = false;
};

static void usage() {
    printf(
        "usage: train_phd [options]\n"
        "data and output\n"
        "  -i, --train PATTERN      training shards (glob), e.g. 'data/kjv/*_train_*.bin'\n"
        "  -j, --val PATTERN        validation shards (glob); no validation if absent\n"
        "  -o, --out DIR            checkpoints and log.txt go here (default out)\n"
        "  -e, --init CKPT          start from this checkpoint (its config wins)\n"
        "  -y, --resume 0|1         continue from the latest checkpoint + state in --out\n"
        "  -k, --tokenizer FILE     print samples as text (tokenizer.bin from data/prepare)\n"
        "model (when not loaded from --init)\n"
        "      --variant NAME       vanilla | phd-K | phd-swa-K-W | phd-cswa-K-W-C | naive-K\n"
        "                           (default phd-cswa-2-16-32)\n"
        "      --model NAME         a named size (below); the flags after it override its fields\n"
        "      --vocab V            vocabulary size (default 50257)\n"
        "      --layers L  --dim D  --heads H  --kv-heads Hkv (default 4, 256, 4, H)\n"
        "      --ffn F              SwiGLU width (default 8D/3 rounded)\n"
        "      --block llama|olmo2  llama: pre-norm (default); olmo2: the paper's block, all three of\n"
        "      --qk-norm 0|1        RMSNorm on q and on k before RoPE (model.h §10)\n"
        "      --norm pre|reordered each sublayer's norm before it, or on its output inside the residual\n"
        "      --z-loss COEF        add COEF * logsumexp(logits)^2 per predicted token (olmo2: 1e-5)\n"
        "                           models: gpt2-124m (V 50257, L 12, D 768, H 12, F 2048, llama);\n"
        "                           paper-550m (V 100278, L 16, D 1536, H 16, Hkv 4, F 4096, olmo2);\n"
        "                           paper-1.2b (V 100278, L 16, D 2048, H 32, Hkv 8, F 8192, olmo2)\n"
        "      --max-seq T          longest sequence (default -t)\n"
        "  -r, --seed N             parameter initialisation and sampling seed (1337)\n"
        "training\n"
        "  -b, --batch B            sequences per micro-batch (4)\n"
        "  -t, --seq T              original positions per sequence (64)\n"
        "  -d, --total-batch N      tokens per optimizer step, a multiple of B*T (B*T)\n"
        "  -x, --steps N            optimizer steps (100)\n"
        "  -l, --lr LR              peak learning rate (1e-3)\n"
        "  -u, --warmup N           linear warm-up steps (0)\n"
        "  -q, --final-lr-frac F    cosine decays to lr*F at the last step (0.1)\n"
        "  -c, --weight-decay WD    AdamW decay on matrices and embeddings (0.1)\n"
        "  -v, --val-every N        validation loss every N steps, 0 = never (20)\n"
        "  -m, --val-steps N        batches per validation (10)\n"
        "  -s, --sample-every N     sample every N steps, 0 = never (50)\n"
        "  -g, --sample-tokens N    tokens per sample (16)\n"
        "  -n, --ckpt-every N       checkpoint every N steps; always at the end (0)\n"
        "      --eval FILE          a multiple-choice task in llm.c's eval format (data/eval.h), scored at\n"
        "                           every validation step; repeatable. Without --train: score the model\n"
        "                           (--init, else a fresh one) on it and exit\n"
        "      --eval-scores 1      there: also print every completion's log-likelihood\n"
        "      --skip-update-z Z    skip the AdamW update of a step whose loss or grad-norm z-score\n"
        "                           over the last 128 steps exceeds Z; 0 = never (0)\n"
        "      --device auto|cpu|cuda  auto: cuda when built with it and a GPU exists (auto)\n"
        "      --tf32 0|1           TF32 tensor cores for the GPU's GEMMs and attention (0: exact fp32)\n"
        "      --dtype auto|fp32|bf16  bf16: the GPU's matmuls and attention on bf16 tensor cores, fp32\n"
        "                           accumulation, weights and optimizer (head size 16, 32, 64 or 128);\n"
        "                           --generate: bf16 weights and KV cache, fp32 sums and logits;\n"
        "                           auto: bf16 on the GPU where the head size allows and --tf32 is 0,\n"
        "                           else fp32 (auto)\n"
        "      --threads N          OpenMP threads (default: all cores)\n"
        "      --overlap 0|1        under mpirun, the GPU reduces each layer's gradients during the\n"
        "                           backward (1), or all after it (0): the same bits, later (1)\n"
        "      --recompute 0|1|2    activation memory: the backward recomputes each layer's norm\n"
        "                           and SwiGLU outputs (1, ~20 %% less at D=2048) or all but its input\n"
        "                           (2, ~one more forward); the same gradients, bit for bit (0)\n"
        "      --logits-chunk ROWS  GPU, bf16: the LM head and loss ROWS rows at a time, the backward's\n"
        "                           head again chunk by chunk, so the batch's logits never exist whole\n"
        "                           (default 0: they do); costs the head and loss again, and\n"
        "                           wout's gradient is summed chunk by chunk (other last bits)\n"
        "      --graph 0|1          on one GPU, each training step is one CUDA graph (1; a shape's\n"
        "                           first step warms up, its second is captured, later ones replay\n"
        "                           it), or its kernels launched one by one (0): the same bits (1)\n"
        "generation (KV-cache decoder)\n"
        "      --generate N         with --init: sample N tokens after the prompt and exit\n"
        "      --prompt-ids 'I J K' the prompt as token ids (default: the separator token)\n"
        "      --prompt TEXT        the prompt as text (needs --tokenizer)\n"
        "      --temperature T      0 = greedy (1.0)\n"
        "      --top-k K            sample among the K most likely, 0 = all (0)\n"
        "      --samples S          S continuations of the prompt, decoded together (one pre-fill; sample\n"
        "                           s draws as -r SEED+s alone would), printed one after another (1)\n"
        "checking\n"
        "      --dump-state FILE    write a debug state for the first training batch (computed\n"
        "                           in double precision) and exit\n"
        "      --check-state FILE   with --init: forward+backward on the state's tokens, print\n"
        "                           per-tensor differences, exit 1 past --check-tol\n"
        "      --check-tol X        largest allowed max|diff| / max|expected| per tensor (1e-5 in fp32,\n"
        "                           2e-2 in bf16); for a gradient, max|expected| is at least 1e-2 of\n"
        "                           the largest gradient\n"
        "      --compare-cpu 1      one step on the GPU and the CPU from the same weights (the first\n"
        "                           training batch): per-tensor differences, exit 1 past --check-tol\n"
        "learning the method\n"
        "      --show-mask VARIANT  print which keys each query of one sequence of -t positions\n"
        "                           sees (default -t 8 here; at most 64 positions, 256 rows)\n"
        "                           and exit; needs no data, model or GPU\n");
}

static int parse_int(const char* flag, const char* s, int lo) {
    char* end;
    long v = strtol(s, &end, 10);
    if (*s == 0 || *end != 0 || v < lo || v > INT32_MAX) die("%s: expected an integer >= %d, got '%s'", flag, lo, s);
    return (int)v;
}
static float parse_float(const char* flag, const char* s, float lo, float hi) {
    char* end;
    float v = strtof(s, &end);
    if (*s == 0 || *end != 0 || !(v >= lo && v <= hi)) die("%s: expected a number in [%g, %g], got '%s'", flag, lo, hi, s);
    return v;
}

static Args parse_args(int argc, char** argv) {
    Args a;
    for (int i = 1; i < argc; i++) {
        std::string f = argv[i];
        if (f == "-h" || f == "--help") { usage(); exit(0); }
        if (i + 1 >= argc) die("%s: missing value (see --help)", f.c_str());
        const char* v = argv[++i];
        const char* fl = f.c_str();
        if (f == "-i" || f == "--train") a.train_pattern = v;
        else if (f == "-j" || f == "--val") a.val_pattern = v;
        else if (f == "-o" || f == "--out") a.out_dir = v;
        else if (f == "-e" || f == "--init") a.init = v;
        else if (f == "-y" || f == "--resume") a.resume = parse_int(fl, v, 0);
        else if (f == "-k" || f == "--tokenizer") a.tokenizer = v;
        else if (f == "--variant") { a.variant = v; a.variant_given = true; }
        else if (f == "--model") a.model = v;
        else if (f == "--block") a.block = v;
        else if (f == "--qk-norm") a.qk_norm = parse_int(fl, v, 0);
        else if (f == "--norm") a.norm = v;
        else if (f == "--z-loss") a.z_loss = parse_float(fl, v, 0, 1);
        else if (f == "--vocab") a.V = parse_int(fl, v, 2);
        else if (f == "--layers") a.L = parse_int(fl, v, 1);
        else if (f == "--dim") a.D = parse_int(fl, v, 2);
        else if (f == "--heads") a.H = parse_int(fl, v, 1);
        else if (f == "--kv-heads") a.Hkv = parse_int(fl, v, 1);
        else if (f == "--ffn") a.F = parse_int(fl, v, 1);
        else if (f == "--max-seq") a.maxT = parse_int(fl, v, 1);
        else if (f == "-r" || f == "--seed") a.seed = (uint64_t)parse_int(fl, v, 0);
        else if (f == "-b" || f == "--batch") a.B = parse_int(fl, v, 1);
        else if (f == "-t" || f == "--seq") { a.T = parse_int(fl, v, 1); a.T_given = true; }
        else if (f == "-d" || f == "--total-batch") a.total_batch = parse_int(fl, v, 1);
        else if (f == "-x" || f == "--steps") a.steps = parse_int(fl, v, 1);
        else if (f == "-l" || f == "--lr") a.lr = parse_float(fl, v, 0, 10);
        else if (f == "-u" || f == "--warmup") a.warmup = parse_int(fl, v, 0);
        else if (f == "-q" || f == "--final-lr-frac") a.final_frac = parse_float(fl, v, 0, 1);
        else if (f == "-c" || f == "--weight-decay") a.weight_decay = parse_float(fl, v, 0, 10);
        else if (f == "-v" || f == "--val-every") a.val_every = parse_int(fl, v, 0);
        else if (f == "-m" || f == "--val-steps") a.val_steps = parse_int(fl, v, 1);
        else if (f == "-s" || f == "--sample-every") a.sample_every = parse_int(fl, v, 0);
        else if (f == "-g" || f == "--sample-tokens") a.sample_tokens = parse_int(fl, v, 1);
        else if (f == "-n" || f == "--ckpt-every") a.ckpt_every = parse_int(fl, v, 0);
        else if (f == "--skip-update-z") a.skip_update_z = parse_float(fl, v, 0, 1e6);
        else if (f == "--device") a.device = v;
        else if (f == "--tf32") a.tf32 = parse_int(fl, v, 0);
        else if (f == "--overlap") a.overlap = parse_int(fl, v, 0);
        else if (f == "--graph") a.graph = parse_int(fl, v, 0);
        else if (f == "--recompute") a.recompute = parse_int(fl, v, 0);
        else if (f == "--logits-chunk") a.logits_chunk = parse_int(fl, v, 0);
        else if (f == "--dtype") a.dtype = v;
        else if (f == "--compare-cpu") a.compare_cpu = parse_int(fl, v, 0);
        else if (f == "--threads") a.threads = parse_int(fl, v, 1);
        else if (f == "--dump-state") a.dump_state = v;
        else if (f == "--check-state") a.check_state = v;
        else if (f == "--check-tol") a.check_tol = parse_float(fl, v, 0, 1);
        else if (f == "--generate") a.generate = parse_int(fl, v, 1);
        else if (f == "--eval") a.evals.push_back(v);
        else if (f == "--eval-scores") a.eval_scores = parse_int(fl, v, 0);
        else if (f == "--prompt") a.prompt = v;
        else if (f == "--prompt-ids") a.prompt_ids = v;
        else if (f == "--temperature") a.temperature = parse_float(fl, v, 0, 100);
        else if (f == "--top-k") a.top_k = parse_int(fl, v, 0);
        else if (f == "--samples") a.samples = parse_int(fl, v, 1);
        else if (f == "--show-mask") a.show_mask = v;
        else die("%s: unknown flag (see --help)", fl);
    }
    if (!a.show_mask.empty()) return a;  // touches no device, data or model: show_mask() checks its input
    if (a.device != "auto" && a.device != "cpu" && a.device != "cuda")
        die("--device: expected auto, cpu or cuda, got '%s'", a.device.c_str());
#ifdef PHD_GPU
    std::string why;
    const bool gpu = gpu_available(&why);
    if (a.device == "cuda" && !gpu) die("--device cuda: no usable GPU (%s)", why.c_str());
    if (a.compare_cpu && !gpu) die("--compare-cpu: no usable GPU (%s)", why.c_str());
    if (a.device == "auto") a.device = gpu ? "cuda" : "cpu";
#else
    if (a.device == "cuda") die("--device cuda: this train_phd was built without nvcc; use --device cpu");
    if (a.compare_cpu) die("--compare-cpu: this train_phd was built without nvcc");
    a.device = "cpu";
#endif
    if (a.tf32 > 1) die("--tf32: expected 0 or 1, got %d", a.tf32);
    if (a.overlap > 1) die("--overlap: expected 0 or 1, got %d", a.overlap);
    if (a.graph > 1) die("--graph: expected 0 or 1, got %d", a.graph);
    if (a.recompute > 2) die("--recompute: expected 0, 1 or 2, got %d", a.recompute);
    if (a.tf32 && a.device == "cpu" && !a.compare_cpu) die("--tf32 1: tensor cores are the GPU's, and this run is on the CPU");
    if (a.dtype != "auto" && a.dtype != "fp32" && a.dtype != "bf16") die("--dtype: expected auto, fp32 or bf16, got '%s'", a.dtype.c_str());
    if (a.dtype == "bf16" && a.tf32) die("--tf32 1: TF32 is for --dtype fp32's matmuls; --dtype bf16 runs them in bf16");
    if (a.dtype == "bf16" && a.device == "cpu" && !a.compare_cpu) die("--dtype bf16: bf16 tensor cores are the GPU's, and this run is on the CPU");
    // -d counts every rank's tokens: each rank runs total / (B*T*ranks) micro-batches.
    if (a.total_batch == 0) a.total_batch = a.B * a.T * dist.size;
    if (a.total_batch % (a.B * a.T * dist.size) != 0)
        die("--total-batch: %d is not a multiple of B*T*ranks = %d*%d*%d = %d", a.total_batch, a.B, a.T, dist.size,
            a.B * a.T * dist.size);
    if (a.resume && !a.init.empty()) die("--resume: cannot be combined with --init");
    if (!a.check_state.empty() && a.init.empty()) die("--check-state: needs --init CKPT");
    if (a.generate && a.init.empty()) die("--generate: needs --init CKPT");
    if (a.eval_scores > 1) die("--eval-scores: expected 0 or 1, got %d", a.eval_scores);
    if (a.qk_norm > 1) die("--qk-norm: expected 0 or 1, got %d", a.qk_norm);
    if (!a.block.empty() && a.block != "llama" && a.block != "olmo2") die("--block: expected llama or olmo2, got '%s'", a.block.c_str());
    if (!a.norm.empty() && a.norm != "pre" && a.norm != "reordered") die("--norm: expected pre or reordered, got '%s'", a.norm.c_str());
    if (a.eval_scores && (a.evals.empty() || !a.train_pattern.empty())) die("--eval-scores: with --eval and without --train");
    if (!a.prompt.empty() && !a.prompt_ids.empty()) die("--prompt: give either --prompt or --prompt-ids, not both");
    return a;
}

// The model config: from --init's checkpoint, else from the flags (over --model's, over the defaults).
static Config model_config(const Args& a, std::vector<float>* init_params_out) {
    const bool block_given = !a.block.empty() || a.qk_norm >= 0 || !a.norm.empty() || a.z_loss >= 0;
    if (!a.init.empty()) {
        Config c = load_checkpoint(a.init.c_str(), init_params_out);
        Config want;
        if (a.variant_given && (parse_variant(a.variant.c_str(), &want), variant_name(want) != variant_name(c)))
            die("--variant: %s does not match the checkpoint %s (%s)", a.variant.c_str(), a.init.c_str(),
                variant_name(c).c_str());
        if (!a.model.empty() || block_given)
            die("--model, --block, --qk-norm, --norm and --z-loss describe a new model; --init's checkpoint %s has its own (block %s)",
                a.init.c_str(), block_name(c).c_str());
        return c;
    }
    NamedModel m = {"", 50257, 4, 256, 4, 0, 0, "llama"};
    if (!a.model.empty()) {
        auto it = std::find_if(std::begin(kModels), std::end(kModels), [&](const NamedModel& k) { return a.model == k.name; });
        if (it == std::end(kModels)) die("--model: unknown model '%s' (expected gpt2-124m, paper-550m or paper-1.2b)", a.model.c_str());
        m = *it;
    }
    Config c;
    std::string err = parse_variant(a.variant.c_str(), &c);
    if (!err.empty()) die("--variant: %s", err.c_str());
    auto pick = [](int given, int preset) { return given ? given : preset; };
    c.V = pick(a.V, m.V); c.Vp = pad_vocab(c.V); c.L = pick(a.L, m.L); c.D = pick(a.D, m.D); c.H = pick(a.H, m.H);
    // Hkv: given; else H where --heads was given or the preset has none; else the preset's. F likewise from D.
    c.Hkv = a.Hkv ? a.Hkv : a.H || !m.Hkv ? c.H : m.Hkv;
    c.F = a.F ? a.F : a.D || !m.F ? (8 * c.D + 2) / 3 : m.F;
    c.maxT = a.maxT ? a.maxT : a.T;
    set_block(&c, (a.block.empty() ? std::string(m.block) : a.block) == "olmo2");
    if (a.qk_norm >= 0) c.qk_norm = a.qk_norm;
    if (!a.norm.empty()) c.norm = a.norm == "reordered" ? NORM_REORDERED : NORM_PRE;
    if (a.z_loss >= 0) c.z_loss = a.z_loss;
    err = config_error(c);
    if (!err.empty()) die("%s", err.c_str());
    return c;
}

// --dtype: bf16 (matmuls and attention on bf16 tensor cores) is the GPU's default, where the
// model's head size has a bf16 attention kernel and TF32 was not asked for; fp32 otherwise.
static bool use_bf16(const Args& a, const Config& c) {
    const bool has_kernel = bf16_attention_head(c.hd());
    if (a.dtype == "bf16" && !has_kernel) die("--dtype bf16: head size %d has no bf16 attention kernel (16, 32, 64 or 128)", c.hd());
    if (a.dtype != "auto") return a.dtype == "bf16";
    return a.device == "cuda" && !a.tf32 && has_kernel;
}
// --check-tol, or its default for the run's dtype: bf16 keeps 8 bits of mantissa, and its
// roundings of each matmul's inputs reach ~1e-2 of a gradient's scale (seen: up to 7.5e-3).
static float check_tol(const Args& a, bool bf16) { return a.check_tol >= 0 ? a.check_tol : bf16 ? 2e-2f : 1e-5f; }

// --check-state on the chosen engine.
template<typename Engine> static int check_state(const Args& a, Engine& E, const Config& c) {
    DebugState s = load_debug_state(a.check_state.c_str());
    if (variant_name(s.cfg) != variant_name(c) || num_params(s.cfg) != num_params(c))
        die("%s: debug state is for %s, checkpoint %s is %s", a.check_state.c_str(), variant_name(s.cfg).c_str(),
            a.init.c_str(), variant_name(c).c_str());
    StepResult got = run_step(E, s.tokens.data(), s.targets.data(), s.B, s.T);
    printf("checking %s (%s, B=%d T=%d) against %s on %s, tolerance %.1e\n", a.check_state.c_str(), variant_name(c).c_str(),
           s.B, s.T, a.init.c_str(), Engine::name(), check_tol(a, use_bf16(a, c)));
    return compare_step("check-state", c, got, StepResult{s.loss, std::move(s.logits), std::move(s.grads)}, check_tol(a, use_bf16(a, c)));
}

// Debug state of the first training batch, computed in double precision.
static int dump_state(const Args& a, const Config& c, const std::vector<float>& params) {
    if (a.train_pattern.empty()) die("--dump-state: needs --train PATTERN for its tokens");
    DataLoader dl;
    dl.open(a.train_pattern.c_str(), a.B, a.T, c.V);
    DebugState s;
    s.cfg = c; s.B = a.B; s.T = a.T;
    s.tokens.resize((size_t)a.B * a.T); s.targets.resize(s.tokens.size());
    dl.next_batch(s.tokens.data(), s.targets.data());
    Model<double> M(c);
    M.params.assign(params.begin(), params.end());
    s.loss = (float)model_forward(M, s.tokens.data(), s.targets.data(), a.B, a.T);
    for (int i = 0; i < a.B * a.T; i++)
        for (int j = 0; j < c.V; j++) s.logits.push_back((float)M.logits[(size_t)i * c.Vp + j]);
    model_backward(M, 1.0);
    s.grads.assign(M.grads.begin(), M.grads.end());
    save_debug_state(a.dump_state.c_str(), s);
    printf("wrote %s (%s, B=%d T=%d, loss %.6f)\n", a.dump_state.c_str(), variant_name(c).c_str(), a.B, a.T, s.loss);
    return 0;
}

// Mean loss over val_steps batches from the start of the validation shards.
template<typename Engine> static float validate(Engine& E, DataLoader& val, int steps, std::vector<int>& in, std::vector<int>& tg) {
    val.seek(0, 0);
    double sum = 0;
    for (int i = 0; i < steps; i++) {
        val.next_batch(in.data(), tg.data());
        sum += E.forward(in.data(), tg.data(), val.B, val.T);
    }
    return (float)(sum / steps);
}

// --eval's tasks: each file's examples, read by every rank, and its name in the output (the
// file's name without its folder and extension).
struct EvalTask {
    std::string path, name;
    std::vector<EvalExample> examples;
};
static std::vector<EvalTask> load_evals(const Args& a) {
    std::vector<EvalTask> tasks;
    for (const std::string& p : a.evals) {
        std::string name = p.substr(p.find_last_of('/') + 1);
        name = name.substr(0, name.find_last_of('.'));
        tasks.push_back({p, name, read_eval(p.c_str())});
    }
    return tasks;
}
// Scores every task, the examples shared out over the ranks and the counts summed: one line
// each, "eval NAME: acc X acc_norm Y (N examples)", and into log (when given) at step.
template<typename Engine> static void run_evals(const Args& a, const Config& c, Engine& E, const std::vector<EvalTask>& tasks, int step, FILE* log) {
    for (const EvalTask& t : tasks) {
        std::vector<std::vector<double>> scores;
        EvalCounts n = evaluate(E, t.examples, t.path.c_str(), c.V, a.B, a.T, dist.rank, dist.size, a.eval_scores ? &scores : nullptr);
        for (size_t i = 0; i < scores.size(); i++)
            for (size_t k = 0; k < scores[i].size(); k++)
                printf("example %zu completion %zu: log-likelihood %.9g (%zu tokens)\n", i, k, scores[i][k], t.examples[i].endings[k].size());
        n.examples = dist.sum(n.examples);
        n.correct = dist.sum(n.correct);
        n.correct_norm = dist.sum(n.correct_norm);
        const double acc = n.examples ? n.correct / n.examples : 0, acc_norm = n.examples ? n.correct_norm / n.examples : 0;
        printf("eval %s: acc %.4f acc_norm %.4f (%.0f examples)\n", t.name.c_str(), acc, acc_norm, n.examples);
        if (log) fprintf(log, "step %d eval %s acc %.6f acc_norm %.6f\n", step, t.name.c_str(), acc, acc_norm);
    }
}
// --eval without --train: the model as it is, on every task.
template<typename Engine> static int evaluate_only(const Args& a, const Config& c, Engine& E) {
    if (a.T > c.maxT) die("--seq: T=%d exceeds the model's max sequence length %d", a.T, c.maxT);
    const std::vector<EvalTask> tasks = load_evals(a);
    dist.startup_end();  // rank 0 read every file first (kernels/dist.h); the ranks' counts are summed below
    run_evals(a, c, E, tasks, 0, nullptr);
    return 0;
}

static Tokenizer load_tokenizer_for(const Args& a, const Config& c) {
    Tokenizer tok;
    if (a.tokenizer.empty()) return tok;
    tok = load_tokenizer(a.tokenizer.c_str());
    // A model may have ids the tokenizer never makes (OLMo 2's padding id past cl100k's 100,277).
    if (tok.vocab_size() > c.V) die("%s: vocabulary of %d tokens, more than the model's V=%d", a.tokenizer.c_str(), tok.vocab_size(), c.V);
    return tok;
}

// The prompt of --generate: --prompt-ids "I J K" (or "I,J,K"), --prompt text encoded with the
// tokenizer (bytes, or GPT-2's or cl100k's BPE), else the separator alone.
static std::vector<int> prompt_tokens(const Args& a, const Tokenizer& tok, const Config& c) {
    std::vector<int> prompt;
    if (!a.prompt_ids.empty()) {
        std::string ids = a.prompt_ids, word;
        std::replace(ids.begin(), ids.end(), ',', ' ');
        std::istringstream words(ids);
        while (words >> word) {
            const int v = parse_int("--prompt-ids", word.c_str(), 0);
            if (v >= c.V) die("--prompt-ids: token %d is out of range for vocabulary size %d", v, c.V);
            prompt.push_back(v);
        }
    } else if (!a.prompt.empty()) {
        if (!tok.vocab_size()) die("--prompt: text prompts need --tokenizer (or give --prompt-ids)");
        if (tok.pattern.empty()) {
            for (unsigned char ch : a.prompt) prompt.push_back(ch);
        } else {
#ifdef PHD_PCRE2
            std::vector<uint32_t> ids;
            Bpe(tok).encode(a.prompt, ids);
            prompt.assign(ids.begin(), ids.end());
#else
            die("--prompt: this train_phd was built without PCRE2, which BPE text needs (dev/setup.sh installs it; then rebuild)");
#endif
        }
    } else {
        prompt.push_back(separator_token(tok, c));
    }
    if (prompt.empty()) die("%s: the prompt is empty", a.prompt_ids.empty() ? "--prompt" : "--prompt-ids");
    return prompt;
}

static std::string ckpt_path(const Args& a, const char* kind, int step) {
    char buf[64];
    snprintf(buf, sizeof buf, "/%s_%08d.bin", kind, step);
    return a.out_dir + buf;
}

// snprintf into a string.
static std::string strf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
static std::string strf(const char* fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

// A model's variant and shapes, as the start-up line, the ranks' agreement and a refused
// resume name them.
static std::string model_shape(const Config& c) {
    return variant_name(c) + strf(": V=%d L=%d D=%d H=%d Hkv=%d F=%d maxT=%d, block %s", c.V, c.L, c.D, c.H, c.Hkv, c.F, c.maxT,
                                  block_name(c).c_str());
}

// With several ranks, all must train the same model from the same weights on the same data,
// with the same batch, schedule and collectives (validation, checkpoints): a rank that
// differs from rank 0 names the first thing that does, and the run stops (kernels/dist.h).
template<typename Engine>
static void check_ranks_agree(const Args& a, const Config& c, const Engine& E, const DataLoader& train_dl, const DataLoader& val_dl) {
    if (dist.size == 1) return;
    uint64_t hash = 1469598103934665603ull;  // FNV-1a over the parameters' 32-bit words
    for (float x : E.params()) {
        uint32_t w;
        memcpy(&w, &x, 4);
        hash = (hash ^ w) * 1099511628211ull;
    }
    auto shards = [](const DataLoader& d) { return strf("%zu files, %lld tokens", d.files.size(), (long long)d.total); };
    dist.same_on_every_rank({
        {"model", model_shape(c)},
        {"initial parameters", strf("hash %016llx", (unsigned long long)hash)},
        {"batch", strf("B=%d T=%d total %d", a.B, a.T, a.total_batch)},
        {"schedule", strf("%d steps, lr %.9g, warm-up %d, final %.9g, decay %.9g, --skip-update-z %.9g", a.steps, a.lr, a.warmup,
                          a.final_frac, a.weight_decay, a.skip_update_z)},
        {"cadence", strf("validation every %d (%d batches), checkpoint every %d, resume %d", a.val_every, a.val_steps, a.ckpt_every,
                         a.resume)},
        {"device", strf("%s, --tf32 %d, --dtype %s", a.device.c_str(), a.tf32, a.dtype.c_str())},
        {"training shards", shards(train_dl)},
        {"validation shards", a.val_pattern.empty() ? std::string("none") : shards(val_dl)},
    });
}

// --resume: rank 0 read the checkpoint and the training state; every rank gets them.
static void share_resumed(std::vector<float>* params, TrainState* st, size_t P) {
    params->resize(P);
    st->m.resize(P);
    st->v.resize(P);
    dist.bcast(&st->step, sizeof st->step);
    dist.bcast(&st->shard, sizeof st->shard);
    dist.bcast(&st->pos, sizeof st->pos);
    dist.bcast(&st->rng, sizeof st->rng);
    for (std::vector<float>* x : {params, &st->m, &st->v}) dist.bcast(x->data(), P * sizeof(float));
}

// Latest step with both a model and a state file in the output directory, or -1.
static int latest_checkpoint(const Args& a) {
    std::string pattern = a.out_dir + "/state_*.bin";
    glob_t g;
    int best = -1;
    if (glob(pattern.c_str(), 0, nullptr, &g) == 0) {
        for (size_t i = 0; i < g.gl_pathc; i++) {
            int step;
            const char* base = strrchr(g.gl_pathv[i], '/') + 1;
            struct stat st;
            if (sscanf(base, "state_%d.bin", &step) == 1 && stat(ckpt_path(a, "model", step).c_str(), &st) == 0)
                best = std::max(best, step);
        }
        globfree(&g);
    }
    return best;
}

template<typename Engine> static int train(const Args& a, const Config& c, Engine& E) {
    if (a.train_pattern.empty()) die("--train: no training shards given (see --help)");
    if (a.T > c.maxT) die("--seq: T=%d exceeds the model's max sequence length %d", a.T, c.maxT);
    if (dist.rank == 0) {  // rank 0 reads and writes every file of --out, and holds its lock for the run
        mkdir_p(a.out_dir);
        lock_dir(a.out_dir);
    }
    const int accum = a.total_batch / (a.B * a.T * dist.size);
    const size_t P = num_params(c);

    DataLoader train_dl, val_dl;  // this rank's rows of every batch (data/dataloader.h)
    train_dl.open(a.train_pattern.c_str(), a.B, a.T, c.V, dist.rank, dist.size);
    if (!a.val_pattern.empty()) val_dl.open(a.val_pattern.c_str(), a.B, a.T, c.V, dist.rank, dist.size);
    AdamW opt;
    opt.lr_max = a.lr; opt.final_frac = a.final_frac; opt.warmup = a.warmup; opt.total_steps = a.steps;
    opt.weight_decay = a.weight_decay;
    TrainState st;
    st.m.assign(P, 0); st.v.assign(P, 0);
    st.rng = a.seed ^ 0x5eed5eed5eedull;
    Rng sample_rng{st.rng};
    Tokenizer tok = load_tokenizer_for(a, c);
    const std::vector<int> start = {separator_token(tok, c)};

    std::vector<float> resumed;
    if (a.resume && dist.rank == 0) {
        int step = latest_checkpoint(a);
        if (step < 0) die("--resume: no model_*.bin + state_*.bin pair in %s", a.out_dir.c_str());
        std::string mp = ckpt_path(a, "model", step), sp = ckpt_path(a, "state", step);
        Config rc = load_checkpoint(mp.c_str(), &resumed);
        if (variant_name(rc) != variant_name(c) || num_params(rc) != P)
            die("%s: checkpoint is %s, not the model asked for (%s)", mp.c_str(), model_shape(rc).c_str(), model_shape(c).c_str());
        st = load_state(sp.c_str(), c);
    }
    const std::vector<EvalTask> tasks = load_evals(a);  // a bad task stops the run before it starts
    // Start-up is over (kernels/dist.h): the ranks check that they agree, then rank 0's
    // checkpoint goes to all of them.
    dist.startup_end();
    check_ranks_agree(a, c, E, train_dl, val_dl);
    if (a.resume) {
        share_resumed(&resumed, &st, P);
        E.set_state(resumed, st.m, st.v);
        train_dl.seek(st.shard, st.pos);
        sample_rng.state = st.rng;
        printf("resumed from %s at step %d\n", ckpt_path(a, "model", st.step).c_str(), st.step);
    }

    const double MiB = 1.0 / (1 << 20);
    const bool gpu = std::string(Engine::name()) == "cuda";
    const char* precision = !gpu                ? ""
                            : use_bf16(a, c) ? " (bf16 tensor cores: matmuls and attention; fp32 weights, accumulation, optimizer)"
                            : a.tf32          ? " (TF32 tensor cores)"
                                              : " (fp32; --dtype bf16 or --tf32 1: tensor cores)";
    // The paper counts a model without its LM head (as if tied to E): 1.2B and 550M are those.
    printf("model %s, %zu parameters (%.4g M; %.4g M without the LM head, as the paper counts), on %s%s\n", model_shape(c).c_str(), P,
           P / 1e6, (P - (double)c.Vp * c.D) / 1e6, Engine::name(), precision);
    printf("batch B=%d T=%d x %d micro-batches x %d rank%s = %d tokens/step, %d steps, lr %g, %d OpenMP threads%s\n", a.B, a.T,
           accum, dist.size, dist.size > 1 ? "s" : "", a.total_batch, a.steps, a.lr, omp_get_max_threads(), dist.size > 1 ? " each" : "");
    const MemoryCount mem = E.memory(a.B, a.T);  // every buffer of the run (kernels/engine.h)
    printf("memory: %.1f MiB: parameters %.1f%s, gradients %.1f, AdamW moments %.1f%s, activations %.1f (B=%d T=%d, --recompute %d, "
           "--logits-chunk %d), other %.1f\n", mem.total() * MiB, mem.params * MiB, gpu && use_bf16(a, c) ? " (fp32 and bf16)" : "",
           mem.grads * MiB, mem.moments * MiB, dist.size > 1 ? " (this rank's shard)" : "", mem.activations * MiB, a.B, a.T, a.recompute,
           a.logits_chunk, mem.other * MiB);
    // MFU as llm.c shows it: the step's model FLOPs (model.h §7's cost model, original
    // tokens) per second against the device's dense peak for the format of its matrix
    // products. A GPU's only; "-" where its peak is unknown (the emulation).
    const double step_flops = model_flops_per_token(c, a.T) * a.total_batch, peak = E.peak_tflops();
    printf("cost model: %.9g FLOPs per original token, %.0f visible (query, key) pairs per sequence of T=%d (model.h §7)\n",
           model_flops_per_token(c, a.T), visible_pairs(c, a.T), a.T);
    if (gpu && peak > 0)
        printf("MFU: the cost model's FLOPs against this GPU's dense peak, %.1f TFLOP/s\n", peak);
    else if (gpu)
        printf("MFU: shown as -, this GPU's peak is unknown (it reports no attributes, or engine.h has no rates for it)\n");
    // Spikes (kernels/outliers.h): a step whose loss or gradient norm lies more than flag_z
    // standard deviations above the last 128 steps' is flagged on its line. A fall is never
    // a spike. With --skip-update-z, one above that z also keeps its update out. The window
    // starts empty in every process: the training state has no room for it, so a resumed
    // run scores nothing for its first 16 steps (a run without skips resumes bit for bit,
    // as the detector only reads).
    const double flag_z = a.skip_update_z > 0 ? std::min((double)a.skip_update_z, OutlierDetector::kFlagZ) : OutlierDetector::kFlagZ;
    OutlierDetector loss_z, norm_z;
    DivergenceCheck divergence;
    int skipped = 0;

    // Rank 0 keeps the log; the other ranks write theirs to /dev/null (as their stdout).
    std::string log_path = dist.rank == 0 ? a.out_dir + "/log.txt" : "/dev/null";
    FILE* log = fopen_check(log_path.c_str(), a.resume ? "a" : "w");
    std::vector<int> in((size_t)a.B * a.T), tg(in.size());                       // (B, T) validation's
    std::vector<int> step_in((size_t)accum * a.B * a.T), step_tg(step_in.size());  // (accum, B, T) a step's micro-batches
    const int first_step = st.step;  // st.step moves on at each checkpoint
    for (int step = first_step; step < a.steps; step++) {
        const bool last = step == a.steps - 1, validating = a.val_every && (step % a.val_every == 0 || last);
        if (validating && !a.val_pattern.empty()) {
            float vl = dist.sum(validate(E, val_dl, a.val_steps, in, tg)) / dist.size;  // the ranks' rows, averaged
            printf("step %d val loss %.4f\n", step, vl);
            fprintf(log, "step %d val %.9g\n", step, vl);
        }
        if (validating) run_evals(a, c, E, tasks, step, log);
        if (dist.rank == 0 && a.sample_every && step > 0 && step % a.sample_every == 0) {
            printf("sample: ");
            auto dec = E.decoder(1, Sampling{1.0f, 0, sample_rng.next_u64()});  // one draw of the saved stream a sample
            dec.generate(start, std::min(a.sample_tokens, c.maxT - 1), [&](const std::vector<int>& t) { print_token(tok, t[0]); });
            printf("\n");
        }

        auto t0 = std::chrono::steady_clock::now();
        const size_t BT = (size_t)a.B * a.T;
        for (int micro = 0; micro < accum; micro++) train_dl.next_batch(step_in.data() + micro * BT, step_tg.data() + micro * BT);
        const float lr = learning_rate(opt, step);
        E.stage(step_in.data(), step_tg.data(), accum, a.B, a.T, opt, step, lr);
        // Where the device holds the clip scale and nothing waits on the host's look at the
        // step (no --skip-update-z), the update is part of the step: the device never idles
        // while the host reads the loss and the norm. Else it waits for them below.
        const bool queued = a.skip_update_z == 0 && E.clips_on_device();
        // The gradients of the mean loss over every rank's micro-batches, reduced (ZeRO-1: each
        // rank gets its shard of them summed over the ranks), their norm and AdamW's clip
        // scale, and the update if queued; nothing waits (on one GPU: one CUDA graph).
        E.step(accum, 1.0f / (accum * dist.size), opt, queued);
        // A NaN or inf loss or gradient norm would reach the weights (no clipping scales a NaN
        // away), and then every later checkpoint: the run stops here, before any checkpoint of
        // this step. Both are sums over every rank, so all ranks stop together, with one line.
        auto stop_unless_finite = [&](const char* what, double x) {
            if (!std::isfinite(x))
                dist.die_everywhere("%s is %s at step %d; no checkpoint written for this step", what, std::isnan(x) ? "NaN" : "infinite", step);
        };
        const double norm = E.norm();  // the step's one wait for the device
        double z_sum = 0;  // model.h §10's z-loss terms, reported beside the loss
        const double loss = dist.sum(E.take_loss(&z_sum)) / (accum * dist.size);
        const double z_term = c.z_loss > 0 ? dist.sum(z_sum) / (accum * dist.size) : 0.0;
        stop_unless_finite("training loss", loss);
        stop_unless_finite("gradient norm", norm);  // a finite loss can have one: e.g. 0 * a NaN weight in a padded logit's row
        // A skipped step still counts, as in llm.c: its batch is used up, and the schedule,
        // AdamW's bias correction and the checkpoint cadence move on; only the parameters and
        // moments stay as they were.
        const double zloss = loss_z.update(loss), znorm = norm_z.update(norm);
        const bool skip = a.skip_update_z > 0 && (zloss > a.skip_update_z || znorm > a.skip_update_z);
        if (skip) skipped++;
        else if (!queued) E.update(opt);  // AdamW on this rank's shard; every rank gets every updated parameter
        double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        printf("step %4d/%d | loss %.6f", step + 1, a.steps, loss);
        if (c.z_loss > 0) printf(" | z-loss %.3e", z_term);
        printf(" | norm %.4f | lr %.2e | %.1f ms | %.0f tok/s", norm, lr, ms, a.total_batch / (ms / 1000));
        if (gpu && peak > 0) printf(" | MFU %.1f%%", 100 * step_flops / (ms / 1000) / (peak * 1e12));
        else if (gpu) printf(" | MFU -");
        if (zloss > flag_z) printf(" | loss z %.1f SPIKE", zloss);
        if (znorm > flag_z) printf(" | norm z %.1f SPIKE", znorm);
        printf(skip ? " | update skipped\n" : "\n");
        if (divergence.update(loss))
            printf("warning: loss %.4g at step %d is far above its start, %.4g at step %d (over %gx for %d steps in a row): "
                   "the learning rate (-l %g) may be too high\n", loss, step + 1, divergence.start, first_step + 1,
                   DivergenceCheck::kFactor, DivergenceCheck::kSteps, a.lr);
        fprintf(log, "step %d train %.9g\n", step, (float)loss);
        if (c.z_loss > 0) fprintf(log, "step %d z_loss %.9g\n", step, (float)z_term);
        fflush(log);

        if ((a.ckpt_every && (step + 1) % a.ckpt_every == 0) || last) {
            st.step = step + 1; st.shard = train_dl.shard; st.pos = train_dl.pos; st.rng = sample_rng.state;
            st.m = E.moment(false);  // whole, gathered from every rank's shard
            st.v = E.moment(true);
            if (dist.rank == 0) {
                save_checkpoint(ckpt_path(a, "model", st.step).c_str(), c, E.params().data());
                save_state(ckpt_path(a, "state", st.step).c_str(), c, st);
                printf("saved %s\n", ckpt_path(a, "model", st.step).c_str());
            }
        }
    }
    if (a.skip_update_z > 0) printf("skipped %d of %d updates (--skip-update-z %g)\n", skipped, a.steps - first_step, a.skip_update_z);
    fclose_check(log, log_path.c_str());
    return 0;
}

// The flags' engine options.
static EngineOptions engine_options(const Args& a, const Config& c, bool training) {
    EngineOptions o;
    o.training = training;
    o.recompute = a.recompute;
    o.logits_chunk = a.logits_chunk;
    o.tf32 = a.tf32 != 0;
    o.bf16 = use_bf16(a, c);
    if (a.logits_chunk && (a.compare_cpu || !a.check_state.empty()))
        die("--logits-chunk: --compare-cpu and --check-state compare a batch's whole logits; leave it out");
    if (a.logits_chunk && (a.device != "cuda" || !o.bf16))
        die("--logits-chunk: saves the GPU's bf16 logits, and this run is %s", a.device != "cuda" ? "on the CPU" : "in fp32 (--dtype bf16)");
    o.overlap = a.overlap != 0;
    o.graphs = a.graph != 0;
    return o;
}

#ifdef PHD_GPU

// --compare-cpu: one forward and backward on both engines from the same weights.
static int compare_cpu(const Args& a, const Config& c, const std::vector<float>& params) {
    if (a.train_pattern.empty()) die("--compare-cpu: needs --train PATTERN for its batch");
    DataLoader dl;
    dl.open(a.train_pattern.c_str(), a.B, a.T, c.V);
    std::vector<int> in((size_t)a.B * a.T), tg(in.size());
    dl.next_batch(in.data(), tg.data());
    const EngineOptions o = engine_options(a, c, true);
    CpuEngine cpu(c, params, o);
    const bool bf16 = o.bf16;
    GpuEngine gpu(c, params, o);
    StepResult want = run_step(cpu, in.data(), tg.data(), a.B, a.T), got = run_step(gpu, in.data(), tg.data(), a.B, a.T);
    printf("GPU vs CPU, one step of %s (B=%d T=%d) in %s, tolerance %.1e\n", variant_name(c).c_str(), a.B, a.T, bf16 ? "bf16" : "fp32",
           check_tol(a, bf16));
    return compare_step("compare-cpu", c, got, want, check_tol(a, bf16));
}
#endif

// --show-mask VARIANT [-t T]: the mask's grid (kernels/show_mask.h). Flags other than -t are ignored.
static int show_mask(const Args& a) {
    Config c;
    std::string err = parse_variant(a.show_mask.c_str(), &c);
    if (!err.empty()) die("--show-mask: %s", err.c_str());
    const int T = a.T_given ? a.T : 8, K = c.K;
    const long long rows = (long long)T * K;
    if (T > kShowMaxT) die("--show-mask: T=%d positions, at most %d can be printed (lower -t)", T, kShowMaxT);
    if (rows > kShowMaxRows) die("--show-mask: T*K = %d*%d = %lld rows, at most %d can be printed (lower -t or K)", T, K, rows, kShowMaxRows);
    print_mask(c, T);
    return 0;
}

// Runs fn on the engine --device chose; training false leaves out the gradients and AdamW
// moments (generation needs only the parameters).
template<typename Fn>
static int on_engine([[maybe_unused]] const Args& a, const Config& c, const std::vector<float>& params, bool training, Fn fn) {
    const EngineOptions options = engine_options(a, c, training);
#ifdef PHD_GPU
    if (a.device == "cuda") {
        GpuEngine E(c, params, options);  // generation decodes in the same dtype
        return fn(E);
    }
#endif
    CpuEngine E(c, params, options);
    return fn(E);
}

int main(int argc, char** argv) {
    // Line-buffered even into a file or a pipe (make train > log, | tee): each step line
    // shows up as it is printed, not when a 4 KiB block fills.
    setvbuf(stdout, nullptr, _IOLBF, 0);
    dist.init(&argc, &argv);  // under mpirun: this process's rank (kernels/dist.h)
    dist.startup_begin();     // rank 0 starts up first; train() ends the start-up
    Args a = parse_args(argc, argv);
    if (dist.size > 1 && (!a.show_mask.empty() || a.generate || !a.check_state.empty() || !a.dump_state.empty() || a.compare_cpu ||
                          a.eval_scores))
        die("--show-mask, --generate, --check-state, --dump-state, --compare-cpu and --eval-scores run in one process: start them "
            "without mpirun");
    if (!a.show_mask.empty()) return show_mask(a);
    if (a.device == "cuda") dist.gpu_init();
    else if (dist.by_env) die("--device cpu: ranks started without mpirun (PHD_RENDEZVOUS) run on GPUs; the CPU path's need mpirun");
    if (a.threads) omp_set_num_threads(a.threads);
    std::vector<float> params;
    Config c = model_config(a, &params);
    if (a.init.empty()) {
        params.resize(num_params(c));
        init_params(c, params.data(), a.seed);
    }
    if (!a.check_state.empty()) return on_engine(a, c, params, true, [&](auto& E) { return check_state(a, E, c); });
    if (!a.dump_state.empty()) return dump_state(a, c, params);
    if (a.generate)
        return on_engine(a, c, params, false, [&](auto& E) {
            const Tokenizer tok = load_tokenizer_for(a, c);
            const std::vector<int> prompt = prompt_tokens(a, tok, c);
            if ((int)prompt.size() + a.generate > c.maxT)
                die("--generate: prompt (%zu tokens) + %d new tokens exceed the model's max sequence length %d", prompt.size(),
                    a.generate, c.maxT);
            return generate(E, c, tok, prompt, a.generate, a.samples, Sampling{a.temperature, a.top_k, a.seed});
        });
    if (!a.evals.empty() && a.train_pattern.empty()) return on_engine(a, c, params, false, [&](auto& E) { return evaluate_only(a, c, E); });
#ifdef PHD_GPU
    if (a.compare_cpu) return compare_cpu(a, c, params);
#endif
    return on_engine(a, c, params, true, [&](auto& E) { return train(a, c, E); });
}
