// train_lm: train a byte-level Mamba language model on a text file, then write text with it.
// What `make demo` runs. Every run writes a folder:
//   config.json, model.safetensors   the model, as Hugging Face lays it out (from_pretrained)
//   checkpoint.safetensors           model + optimizer + RNG + data position, for --resume
//   metrics.csv, loss.svg            the loss curve (open the SVG in a browser)
//
//   train_lm [--data FILE|DIR] [--mixer mamba|mamba2] [--steps N] [--out RUN] [--resume RUN] ...
// Ctrl-C (SIGINT) or SIGTERM saves the checkpoint and exits (code 128 + signal); a second one
// stops at once. --resume RUN continues exactly where the run stopped.
#include <coil/coil.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "text_util.h"

using namespace coil;
namespace fs = std::filesystem;

namespace {

struct Args {
  std::string data = "/usr/share/games/fortunes";  // Debian's fortunes package: English text
  std::string mixer = "mamba";
  std::string out = "runs/demo";
  std::string resume;
  int64_t layers = 4, d_model = 256, steps = 600, batch = 8, seq_len = 256;
  int64_t eval_every = 100, eval_batches = 8, sample_bytes = 400;
  double lr = 4e-3, max_minutes = 5.0;
  uint64_t seed = 0;
  int threads = 0;
  int64_t cp = 1;            // context parallelism: ranks sharing each sequence (under mpirun)
  bool bf16 = false;         // mixed precision (autocast)
  bool steps_given = false;  // --resume keeps the run's steps unless --steps says otherwise
};

void usage() {
  std::printf(
      "usage: train_lm [options]\n"
      "  --data PATH        text file (memory-mapped) or directory of text files [%s]\n"
      "  --mixer NAME       mamba | mamba2 [mamba]\n"
      "  --layers N         [4]     --d-model N   [256]\n"
      "  --steps N          optimizer steps [600]\n"
      "  --batch N          [8]     --seq-len N   [256]\n"
      "  --lr X             peak learning rate [0.004]\n"
      "  --max-minutes X    stop training after this long [5]\n"
      "  --eval-every N     validation every N steps [100]\n"
      "  --out RUN          run folder to write [runs/demo]\n"
      "  --resume RUN       continue the run in folder RUN (its config and options)\n"
      "  --seed N           [0]     --threads N   [all cores]\n"
      "  --bf16             mixed precision: products in bfloat16 (autocast), weights float32\n"
      "  --cp N             under mpirun: split every sequence over N ranks (context\n"
      "                     parallelism); the other world_size / N split the batch [1]\n",
      Args().data.c_str());
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto val = [&]() -> std::string {
      COIL_CHECK(i + 1 < argc, "train_lm: ", k, " needs a value");
      return argv[++i];
    };
    if (k == "--help" || k == "-h") {
      usage();
      std::exit(0);
    } else if (k == "--data")
      a.data = val();
    else if (k == "--mixer")
      a.mixer = val();
    else if (k == "--out")
      a.out = val();
    else if (k == "--resume")
      a.resume = val();
    else if (k == "--layers")
      a.layers = std::stoll(val());
    else if (k == "--d-model")
      a.d_model = std::stoll(val());
    else if (k == "--steps")
      a.steps = std::stoll(val()), a.steps_given = true;
    else if (k == "--batch")
      a.batch = std::stoll(val());
    else if (k == "--seq-len")
      a.seq_len = std::stoll(val());
    else if (k == "--eval-every")
      a.eval_every = std::stoll(val());
    else if (k == "--lr")
      a.lr = std::stod(val());
    else if (k == "--max-minutes")
      a.max_minutes = std::stod(val());
    else if (k == "--seed")
      a.seed = std::stoull(val());
    else if (k == "--threads")
      a.threads = static_cast<int>(std::stol(val()));
    else if (k == "--bf16")
      a.bf16 = true;
    else if (k == "--cp")
      a.cp = std::stoll(val());
    else
      fail("train_lm: unknown option '", k, "' (see --help)");
  }
  COIL_CHECK(a.mixer == "mamba" || a.mixer == "mamba2",
             "train_lm: --mixer must be mamba or mamba2, got ", a.mixer);
  return a;
}

nn::MambaConfig demo_config(const Args& a) {
  nn::MambaConfig c;
  c.model_type = a.mixer;
  c.vocab_size = 256;  // bytes
  c.hidden_size = a.d_model;
  c.num_hidden_layers = a.layers;
  c.bos_token_id = c.eos_token_id = c.pad_token_id = 0;
  if (a.mixer == "mamba2") {
    c.state_size = 64;
    c.head_dim = 64;
    c.num_heads = c.intermediate_size() / c.head_dim;
    c.n_groups = 1;
    c.chunk_size = 64;
  }
  return c;
}

// Options that define a run, kept in the run folder so --resume continues the same schedule.
std::string options_json(const Args& a) {
  json::Value j = json::Value::object();
  j.set("data", a.data);
  j.set("steps", a.steps);
  j.set("batch", a.batch);
  j.set("seq_len", a.seq_len);
  j.set("lr", a.lr);
  j.set("eval_every", a.eval_every);
  j.set("seed", static_cast<int64_t>(a.seed));
  j.set("bf16", a.bf16);
  return j.dump(2) + "\n";
}

void read_options(const std::string& run, Args& a) {
  json::Value j = json::parse_file(run + "/train_options.json");
  a.data = j.get<std::string>("data", a.data);
  if (!a.steps_given) a.steps = j.get<int64_t>("steps", a.steps);
  a.batch = j.get<int64_t>("batch", a.batch);
  a.seq_len = j.get<int64_t>("seq_len", a.seq_len);
  a.lr = j.get<double>("lr", a.lr);
  a.eval_every = j.get<int64_t>("eval_every", a.eval_every);
  a.seed = static_cast<uint64_t>(j.get<int64_t>("seed", 0));
  a.bf16 = j.get<bool>("bf16", false);
}

constexpr double kLn2 = 0.6931471805599453;

}  // namespace

int main(int argc, char** argv) try {
  Args a = parse(argc, argv);
  if (a.threads > 0) set_num_threads(a.threads);
  // Under mpirun every rank trains on its slice of each batch (data parallelism); rank 0
  // prints and writes the run folder.
  dist::init();
  const bool main_rank = dist::rank() == 0;
  const bool resuming = !a.resume.empty();
  if (resuming) {
    a.out = a.resume;
    read_options(a.out, a);
  }
  manual_seed(a.seed);
  nn::ByteCorpus data = nn::ByteCorpus::open(a.data);
  if (main_rank)
    std::printf("data: %s, %.2f MB (%lld train / %lld validation bytes)\n", a.data.c_str(),
                data.size() / 1e6, static_cast<long long>(data.train_size()),
                static_cast<long long>(data.val_size()));

  nn::MambaConfig config =
      resuming ? nn::MambaConfig::load(a.out + "/config.json") : demo_config(a);
  auto model = std::make_shared<nn::MambaLM>(config);
  nn::TrainOptions to;
  to.batch = a.batch;
  to.seq_len = a.seq_len;
  to.total_steps = a.steps;
  to.warmup_steps = std::min<int64_t>(50, a.steps / 10);
  to.lr = a.lr;
  to.data_seed = 1000 + a.seed;
  to.data_parallel = dist::world_size() > 1;
  to.context_parallel = a.cp;
  to.autocast_bf16 = a.bf16;
  nn::LMTrainer trainer(model, data, to);

  if (main_rank) fs::create_directories(a.out);
  dist::barrier();
  const std::string ckpt = a.out + "/checkpoint.safetensors", csv = a.out + "/metrics.csv";
  std::vector<demo::MetricRow> metrics;
  if (resuming) {
    trainer.load_checkpoint(ckpt);
    metrics = demo::read_metrics(csv);
    if (main_rank) {
      std::printf("resumed %s at step %lld\n", a.out.c_str(),
                  static_cast<long long>(trainer.step()));
      if (a.steps_given) io::write_text_file_atomic(a.out + "/train_options.json", options_json(a));
    }
  } else if (main_rank) {
    config.save(a.out + "/config.json");
    io::write_text_file_atomic(a.out + "/train_options.json", options_json(a));
  }
  if (main_rank && dist::world_size() > 1) {
    const int64_t dp = dist::world_size() / a.cp;
    std::printf("%lld ranks: data parallel over %lld (%lld rows of each batch per rank)",
                static_cast<long long>(dist::world_size()), static_cast<long long>(dp),
                static_cast<long long>(a.batch / dp));
    if (a.cp > 1)
      std::printf(", context parallel over %lld (about %lld bytes of each sequence per rank)",
                  static_cast<long long>(a.cp), static_cast<long long>(a.seq_len / a.cp));
    std::printf("\n");
  }
  if (main_rank)
    std::printf(
        "model: %s, %lld layers, d_model %lld, %.2fM parameters; %lld steps of %lld x %lld bytes, "
        "%d "
        "threads\n",
        config.model_type.c_str(), static_cast<long long>(config.num_hidden_layers),
        static_cast<long long>(config.hidden_size), model->num_parameters() / 1e6,
        static_cast<long long>(a.steps), static_cast<long long>(a.batch),
        static_cast<long long>(a.seq_len), get_num_threads());

  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  double smoothed = 0, val_bpb = NAN;
  int64_t start_step = trainer.step(), smoothed_n = 0;
  demo::ProgressBar bar(a.steps);
  bool out_of_time = false;
  int stop_signal = 0;  // SIGINT / SIGTERM: save and exit; --resume continues
  nn::install_stop_handler();
  while (trainer.step() < a.steps) {
    double loss = trainer.train_step();
    const int64_t s = trainer.step();
    smoothed = smoothed_n == 0 ? loss : 0.9 * smoothed + 0.1 * loss;
    ++smoothed_n;
    const double elapsed = std::chrono::duration<double>(clock::now() - t0).count();
    const double tok_s = (s - start_step) * trainer.tokens_per_step() / elapsed;
    out_of_time = elapsed > a.max_minutes * 60;
    if (dist::world_size() > 1) {  // every rank stops at the same step: rank 0's clock decides
      Tensor stop = full({1}, out_of_time ? 1.0 : 0.0, Options(kI32));
      dist::broadcast(stop, 0);
      out_of_time = stop.item<int32_t>() != 0;
    }
    stop_signal = nn::stop_requested_by_any_rank();
    if (stop_signal) {  // no evaluation: save what the run has and go
      metrics.push_back({s, loss / kLn2, NAN, trainer.lr(), tok_s, trainer.skipped_steps()});
      trainer.save_checkpoint(ckpt);
      if (main_rank) {
        demo::write_metrics(csv, metrics);
        bar.finish_line();
        std::printf("%s at step %lld: saved %s; continue with --resume %s\n",
                    nn::signal_name(stop_signal), static_cast<long long>(s), ckpt.c_str(),
                    a.out.c_str());
      }
      return 128 + stop_signal;
    }
    const bool eval_now = s % a.eval_every == 0 || s == a.steps || out_of_time;
    if (eval_now) val_bpb = trainer.evaluate(a.eval_batches) / kLn2;
    metrics.push_back(
        {s, loss / kLn2, eval_now ? val_bpb : NAN, trainer.lr(), tok_s, trainer.skipped_steps()});
    if (main_rank)
      bar.update(s, smoothed / kLn2, tok_s, elapsed, (a.steps - s) * elapsed / (s - start_step));
    if (eval_now) {
      trainer.save_checkpoint(ckpt);
      if (main_rank) {
        bar.finish_line();
        std::printf("step %5lld  train %.3f bits/byte  validation %.3f bits/byte\n",
                    static_cast<long long>(s), smoothed / kLn2, val_bpb);
        demo::write_metrics(csv, metrics);
      }
    }
    if (out_of_time) {
      if (main_rank)
        std::printf("time budget of %.1f minutes reached at step %lld\n", a.max_minutes,
                    static_cast<long long>(s));
      break;
    }
  }
  if (std::isnan(val_bpb)) val_bpb = trainer.evaluate(a.eval_batches) / kLn2;  // no step ran
  trainer.save_checkpoint(ckpt);
  if (!main_rank) return 0;
  bar.finish_line();
  model->save_pretrained(a.out);
  demo::write_metrics(csv, metrics);
  demo::write_loss_svg(a.out + "/loss.svg", metrics, config.model_type);
  const double secs = std::chrono::duration<double>(clock::now() - t0).count();
  std::printf("final validation loss: %.3f bits/byte (step %lld, %.0f s)\n", val_bpb,
              static_cast<long long>(trainer.step()), secs);
  if (trainer.skipped_steps() > 0)
    std::printf("skipped %lld steps whose gradients were NaN or Inf (metrics.csv: skipped_steps)\n",
                static_cast<long long>(trainer.skipped_steps()));
  std::printf(
      "wrote %s/{config.json, model.safetensors, checkpoint.safetensors, metrics.csv, loss.svg}\n",
      a.out.c_str());

  model->set_context_parallel(std::nullopt);  // rank 0 writes the sample alone
  nn::SamplingOptions sampling;
  sampling.temperature = 0.8;
  sampling.top_k = 40;
  sampling.top_p = 0.95;
  const std::string prompt = "The ";
  Tensor out = model->generate(demo::bytes_to_ids(prompt), a.sample_bytes, sampling);
  std::printf("\n--- sample (temperature 0.8, top-k 40, top-p 0.95) ---\n%s\n---\n",
              demo::ids_to_text(out.select(0, 0)).c_str());
  return 0;
} catch (const coil::Error& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
