#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "test_util.h"

using namespace coil;
namespace fs = std::filesystem;

TEST_SUITE("nn.optim") {
  TEST_CASE("AdamW matches a float64 reference loop over several steps") {
    manual_seed(9);
    Tensor p = ct::rnd({5}, kF64).requires_grad_();
    std::vector<double> ref = ct::vals(p), m(5, 0), v(5, 0);
    optim::AdamWOptions o;
    o.lr = 0.1;
    o.beta1 = 0.8;
    o.beta2 = 0.9;
    o.eps = 1e-6;
    o.weight_decay = 0.05;
    optim::AdamW opt({p}, o);
    for (int t = 1; t <= 4; ++t) {
      opt.zero_grad();
      (p * p * p).sum().backward();  // grad 3 p^2
      opt.step();
      for (int i = 0; i < 5; ++i) {
        double g = 3 * ref[i] * ref[i];
        ref[i] *= 1 - o.lr * o.weight_decay;
        m[i] = o.beta1 * m[i] + (1 - o.beta1) * g;
        v[i] = o.beta2 * v[i] + (1 - o.beta2) * g * g;
        double mh = m[i] / (1 - std::pow(o.beta1, t)), vh = v[i] / (1 - std::pow(o.beta2, t));
        ref[i] -= o.lr * mh / (std::sqrt(vh) + o.eps);
      }
      ct::check_close(p, ref, 1e-12, 1e-12, "step");
    }
  }

  TEST_CASE("AdamW and clip_grad_norm_ on f32 parameters (the fused loops) match float64 loops") {
    manual_seed(10);
    // sizes past the clip's 65536-element blocks and the loops' parallel grain, and odd ones
    std::vector<Tensor> ps = {ct::rnd({70001}, kF32).requires_grad_(),
                              ct::rnd({33, 7}, kF32).requires_grad_(),
                              ct::rnd({3}, kF32).requires_grad_()};
    std::vector<std::vector<double>> ref, m, v;
    for (const Tensor& p : ps) {
      ref.push_back(ct::vals(p));
      m.emplace_back(ref.back().size(), 0.0);
      v.emplace_back(ref.back().size(), 0.0);
    }
    optim::AdamWOptions o;
    o.lr = 0.05;
    o.beta1 = 0.8;
    o.beta2 = 0.95;
    o.eps = 1e-6;
    o.weight_decay = 0.1;
    // the matrix in a group without decay, as MambaLM's weight_decay_groups does for norms
    optim::AdamW opt(std::vector<optim::ParamGroup>{{{ps[0], ps[2]}, -1, -1}, {{ps[1]}, -1, 0.0}},
                     o);
    const double wd[] = {0.1, 0.0, 0.1};
    for (int step = 1; step <= 3; ++step) {
      CAPTURE(step);
      opt.zero_grad();
      std::vector<std::vector<double>> gs;
      for (size_t j = 0; j < ps.size(); ++j) {
        // gradients set directly: the matrix's is a transposed (non-contiguous) view
        Tensor g = j == 1 ? ct::rnd({7, 33}, kF32, -3, 3).t() : ct::rnd(ps[j].sizes(), kF32, -3, 3);
        ps[j].set_grad(g);
        gs.push_back(ct::vals(g));
      }
      double total = 0;
      for (const auto& g : gs)
        for (double x : g) total += x * x;
      const double norm = std::sqrt(total), max_norm = 50.0;
      const double got = optim::clip_grad_norm_(ps, max_norm);
      CHECK(got == doctest::Approx(norm).epsilon(1e-9));
      const double scale = norm > max_norm ? max_norm / (norm + 1e-6) : 1.0;
      for (size_t j = 0; j < ps.size(); ++j) {
        for (double& x : gs[j]) x *= scale;
        ct::check_close(ps[j].grad(), gs[j], 1e-6, 1e-7, "clipped grad");
      }
      opt.step();
      const double bc1 = 1 - std::pow(o.beta1, step), bc2 = 1 - std::pow(o.beta2, step);
      for (size_t j = 0; j < ps.size(); ++j) {
        for (size_t i = 0; i < ref[j].size(); ++i) {
          const double g = gs[j][i];
          ref[j][i] *= 1 - o.lr * wd[j];
          m[j][i] = o.beta1 * m[j][i] + (1 - o.beta1) * g;
          v[j][i] = o.beta2 * v[j][i] + (1 - o.beta2) * g * g;
          ref[j][i] -= o.lr * (m[j][i] / bc1) / (std::sqrt(v[j][i] / bc2) + o.eps);
        }
        ct::check_close(ps[j], ref[j], 1e-5, 1e-5, "param");
      }
    }
  }

  TEST_CASE("a parameter listed twice: clipped and updated twice, in order") {
    Tensor a = tensor(std::vector<float>{1, -2, 3}).requires_grad_();
    a.set_grad(tensor(std::vector<float>{3, 0, 4}));
    const double n = optim::clip_grad_norm_({a, a}, 1.0);  // the norm counts it twice
    CHECK(n == doctest::Approx(std::sqrt(50.0)));
    const double s = 1.0 / (std::sqrt(50.0) + 1e-6);
    ct::check_close(a.grad(), {3 * s * s, 0, 4 * s * s}, 1e-6, 1e-9);
    optim::AdamWOptions o;
    o.lr = 0.1;
    o.weight_decay = 0.0;
    optim::AdamW opt({a, a}, o);
    opt.step();
    // two updates from fresh state with the same gradient: each moves by lr (sign of g)
    ct::check_close(a, {1 - 0.2, -2, 3 - 0.2}, 1e-5, 1e-6);
  }

  TEST_CASE("step_if_finite: a NaN batch is skipped and leaves no trace") {
    // y = x w on batches of 4 rows; batch 2 holds a NaN. A guarded run must end where a run that
    // never saw batch 2 ends, bit for bit, and that step must leave w and AdamW's state alone.
    manual_seed(4);
    std::vector<Tensor> xs, ys;
    for (int k = 0; k < 6; ++k) {
      xs.push_back(ct::rnd({4, 3}, kF64));
      ys.push_back(ct::rnd({4, 1}, kF64));
    }
    xs[2].data_ptr<double>()[1 * 3 + 2] = NAN;
    const Tensor w0 = ct::rnd({3, 1}, kF64);
    auto run = [&](bool skip_bad_batch, std::vector<bool>* skipped) {
      Tensor w = w0.clone().requires_grad_();
      optim::AdamW opt({w}, optim::AdamWOptions{});
      for (int k = 0; k < 6; ++k) {
        if (skip_bad_batch && k == 2) continue;
        opt.zero_grad();
        square(matmul(xs[k], w) - ys[k]).mean().backward();
        const std::vector<double> before = ct::vals(w);
        const int64_t count = opt.step_count();
        const optim::GuardedStep g = optim::step_if_finite(opt, {w}, 1.0);
        if (skipped) skipped->push_back(g.skipped);
        if (g.skipped) {
          CHECK(std::isnan(g.grad_norm));
          CHECK(ct::vals(w) == before);  // untouched, bit for bit
          CHECK(opt.step_count() == count);
          CHECK(!w.grad().defined());
        } else {
          CHECK(std::isfinite(g.grad_norm));
        }
      }
      return ct::vals(w);
    };
    std::vector<bool> skipped;
    const std::vector<double> guarded = run(false, &skipped);
    CHECK(skipped == std::vector<bool>{false, false, true, false, false, false});
    CHECK(guarded == run(true, nullptr));
    for (double v : guarded) CHECK(std::isfinite(v));
  }

  TEST_CASE("SGD with momentum, Nesterov and weight decay matches a reference") {
    for (bool nesterov : {false, true}) {
      Tensor p = tensor(std::vector<double>{1, -2}).requires_grad_();
      std::vector<double> ref = {1, -2}, buf(2, 0);
      optim::SGDOptions o;
      o.lr = 0.1;
      o.momentum = 0.9;
      o.weight_decay = 0.01;
      o.nesterov = nesterov;
      optim::SGD opt({p}, o);
      for (int t = 0; t < 3; ++t) {
        opt.zero_grad();
        (p * p).sum().backward();
        opt.step();
        for (int i = 0; i < 2; ++i) {
          double d = 2 * ref[i] + o.weight_decay * ref[i];
          buf[i] = t == 0 ? d : o.momentum * buf[i] + d;
          ref[i] -= o.lr * (nesterov ? d + o.momentum * buf[i] : buf[i]);
        }
        ct::check_close(p, ref, 1e-12, 1e-12);
      }
    }
  }

  TEST_CASE("param groups, clip_grad_norm_, errors") {
    Tensor a = ones({2}, kF64).requires_grad_(), b = ones({2}, kF64).requires_grad_();
    optim::AdamW opt(std::vector<optim::ParamGroup>{{{a}, -1, 0.0}, {{b}, -1, 0.5}},
                     optim::AdamWOptions{});
    (a.sum() + b.sum()).backward();
    opt.step();
    CHECK(ct::vals(a)[0] == doctest::Approx(1 - 1e-3).epsilon(1e-9));
    CHECK(ct::vals(b)[0] == doctest::Approx(1 * (1 - 1e-3 * 0.5) - 1e-3).epsilon(1e-9));
    Tensor g = tensor(std::vector<double>{3, 4}).requires_grad_();
    (g * g * 0.5).sum().backward();  // grad = (3, 4), norm 5
    double n = optim::clip_grad_norm_({g}, 1.0);
    CHECK(n == doctest::Approx(5));
    ct::check_close(g.grad(), {0.6, 0.8}, 1e-6, 0);
    ct::check_error([] { optim::SGD({ones({2})}); }, {"SGD", "require grad", "[2]"});
    ct::check_error(
        [&] {
          optim::AdamWOptions o;
          o.beta1 = 1.0;
          optim::AdamW({a}, o);
        },
        {"AdamW", "betas", "1"});
  }

  TEST_CASE("LR schedules match transformers' formulas") {
    using optim::lr_factor;
    using optim::LRSchedule;
    const double pi = 3.14159265358979323846;
    // constant with warmup
    LRSchedule c = LRSchedule::constant(4);
    CHECK(lr_factor(c, 0) == 0.0);
    CHECK(lr_factor(c, 2) == 0.5);
    CHECK(lr_factor(c, 4) == 1.0);
    CHECK(lr_factor(c, 1000) == 1.0);
    CHECK(lr_factor(LRSchedule::constant(), 0) == 1.0);
    // linear: warmup 10, decay to 0 at 100
    LRSchedule l = LRSchedule::linear(10, 100);
    CHECK(lr_factor(l, 0) == 0.0);
    CHECK(lr_factor(l, 5) == 0.5);
    CHECK(lr_factor(l, 10) == 1.0);
    CHECK(lr_factor(l, 55) == doctest::Approx(0.5).epsilon(1e-15));
    CHECK(lr_factor(l, 73) == doctest::Approx((100.0 - 73) / 90).epsilon(1e-15));
    CHECK(lr_factor(l, 100) == 0.0);
    CHECK(lr_factor(l, 150) == 0.0);
    CHECK(lr_factor(LRSchedule::linear(10, 100, 0.1), 55) == doctest::Approx(0.1 + 0.9 * 0.5));
    // cosine: warmup 10, total 100, optional floor
    LRSchedule co = LRSchedule::cosine(10, 100);
    CHECK(lr_factor(co, 3) == 0.3);
    CHECK(lr_factor(co, 10) == 1.0);
    for (int64_t s : {10, 20, 32, 55, 77, 99, 100}) {
      double progress = (s - 10) / 90.0;
      double want = 0.5 * (1 + std::cos(pi * progress));
      CHECK(lr_factor(co, s) == doctest::Approx(want).epsilon(1e-14));
      double want_min = 0.2 + 0.8 * want;
      CHECK(lr_factor(LRSchedule::cosine(10, 100, 0.2), s) ==
            doctest::Approx(want_min).epsilon(1e-14));
    }
    CHECK(lr_factor(co, 55) == doctest::Approx(0.5).epsilon(1e-14));
    CHECK(lr_factor(co, 100) == doctest::Approx(0.0).epsilon(1e-14));
    CHECK(lr_factor(co, 500) == doctest::Approx(0.0).epsilon(1e-14));  // stays at the floor
    CHECK(lr_factor(LRSchedule::cosine(10, 100, 0.2), 500) == doctest::Approx(0.2));
    CHECK(optim::lr_at(co, 3e-4, 55) == doctest::Approx(1.5e-4).epsilon(1e-14));
    // no warmup: step 0 already trains at the full rate
    CHECK(lr_factor(LRSchedule::cosine(0, 10), 0) == 1.0);
    ct::check_error([] { LRSchedule::cosine(10, 5); }, {"cosine", "warmup_steps 10", "5"});
    ct::check_error([] { LRSchedule::linear(0, 5, 1.5); }, {"min_ratio", "1.5"});
    ct::check_error([&] { lr_factor(co, -1); }, {"step", "-1"});
  }

  TEST_CASE("LRScheduler drives every group from its own base lr") {
    Tensor a = ones({2}).requires_grad_(), b = ones({2}).requires_grad_();
    optim::AdamW opt(std::vector<optim::ParamGroup>{{{a}, 1e-3, -1}, {{b}, 4e-3, -1}},
                     optim::AdamWOptions{});
    optim::LRSchedule s = optim::LRSchedule::cosine(2, 10, 0.1);
    optim::LRScheduler sched(opt, s);
    CHECK(opt.param_groups()[0].lr == 0.0);  // step 0 of the warmup
    for (int k = 1; k <= 12; ++k) {
      (a.sum() + b.sum()).backward();
      opt.step();
      opt.zero_grad();
      sched.step();
      CHECK(sched.last_step() == k);
      CHECK(opt.param_groups()[0].lr == 1e-3 * optim::lr_factor(s, k));
      CHECK(opt.param_groups()[1].lr == 4e-3 * optim::lr_factor(s, k));
    }
    CHECK(opt.lr() == doctest::Approx(1e-4));
    // resuming: a fresh scheduler over a fresh optimizer picks up where this one was
    Tensor a2 = ones({2}).requires_grad_(), b2 = ones({2}).requires_grad_();
    optim::AdamW opt2(std::vector<optim::ParamGroup>{{{a2}, 1e-3, -1}, {{b2}, 4e-3, -1}},
                      optim::AdamWOptions{});
    optim::LRScheduler sched2(opt2, s);
    sched2.set_step(5);
    CHECK(opt2.param_groups()[1].lr == 4e-3 * optim::lr_factor(s, 5));
  }

  TEST_CASE("AdamW state_dict round-trip: resumed training is bit-identical") {
    manual_seed(21);
    auto make = [](const std::vector<Tensor>& init) {
      std::vector<Tensor> ps;
      for (const Tensor& t : init) ps.push_back(t.detach().clone().requires_grad_());
      return ps;
    };
    auto loss = [](const std::vector<Tensor>& ps) {
      return (ps[0] * ps[0] * ps[0]).sum() + (ps[1].tanh() * ps[2].sum()).sum() +
             ps[3].square().sum();
    };
    std::vector<Tensor> init = {ct::rnd({3, 4}), ct::rnd({5}), ct::rnd({2, 2}, kF64), ct::rnd({3})};
    std::vector<Tensor> p = make(init);
    auto groups = [](const std::vector<Tensor>& ps) {
      return std::vector<optim::ParamGroup>{{{ps[0], ps[1]}, -1, 0.1}, {{ps[2], ps[3]}, 5e-3, 0}};
    };
    optim::AdamWOptions o;
    o.lr = 1e-2;
    o.beta1 = 0.8;
    auto run = [&](optim::AdamW& opt, const std::vector<Tensor>& ps, int steps, bool skip_last) {
      for (int s = 0; s < steps; ++s) {
        opt.zero_grad();
        loss(ps).backward();
        if (skip_last)
          Tensor(ps[3]).set_grad(Tensor());  // a parameter without a gradient has no state
        opt.step();
      }
    };
    optim::AdamW opt(groups(p), o);
    run(opt, p, 5, true);
    opt.param_groups()[0].lr = 3e-3;  // as a schedule would have set it
    optim::StateDict sd = opt.state_dict();
    std::vector<std::string> names;
    for (const auto& [k, t] : sd) names.push_back(k);
    CHECK(names == std::vector<std::string>{
                       "step", "group.0.lr", "group.0.weight_decay", "group.0.num_params",
                       "group.1.lr", "group.1.weight_decay", "group.1.num_params",
                       "state.0.0.exp_avg", "state.0.0.exp_avg_sq", "state.0.1.exp_avg",
                       "state.0.1.exp_avg_sq", "state.1.0.exp_avg", "state.1.0.exp_avg_sq"});
    CHECK(sd[0].second.dtype() == kI64);
    CHECK(sd[0].second.dim() == 0);
    CHECK(sd[0].second.item<int64_t>() == 5);
    CHECK(sd[1].second.item<double>() == 3e-3);
    CHECK(sd[5].second.item<double>() == 0.0);
    CHECK(sd[11].second.dtype() == kF64);  // state of an f64 parameter stays f64

    // through a safetensors file, as a checkpoint would
    fs::path file = fs::temp_directory_path() /
                    ("coil_test_optim_" + std::to_string(::getpid()) + ".safetensors");
    io::save_safetensors(file.string(), sd);
    optim::StateDict loaded = io::load_safetensors(file.string()).tensors;
    fs::remove(file);

    std::vector<Tensor> q = make(p);
    optim::AdamW opt2(groups(q), optim::AdamWOptions{.lr = 1, .beta1 = 0.8});
    opt2.load_state_dict(loaded);
    CHECK(opt2.step_count() == 5);
    CHECK(opt2.param_groups()[0].lr == 3e-3);
    CHECK(opt2.param_groups()[1].weight_decay == 0.0);
    run(opt, p, 5, false);
    run(opt2, q, 5, false);
    for (size_t i = 0; i < p.size(); ++i) {
      CAPTURE(i);
      Tensor a = p[i].detach(), b = q[i].detach();
      CHECK(std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0);
      CHECK(ct::vals(a) != ct::vals(init[i]));  // they did train
    }
    // loading copied: the loaded dict does not alias the optimizer's buffers
    CHECK(!opt2.state_dict()[7].second.is_same(loaded[7].second));
  }

  TEST_CASE("SGD momentum state round-trips; bad state dicts are refused untouched") {
    auto make = [] {
      return std::vector<Tensor>{tensor(std::vector<double>{1, -2}).requires_grad_(),
                                 tensor(std::vector<double>{0.5, 3, 4}).requires_grad_()};
    };
    optim::SGDOptions o;
    o.lr = 0.05;
    o.momentum = 0.9;
    auto run = [](optim::SGD& opt, const std::vector<Tensor>& ps, int n) {
      for (int s = 0; s < n; ++s) {
        opt.zero_grad();
        ((ps[0] * ps[0]).sum() + (ps[1] * ps[1] * ps[1]).sum()).backward();
        opt.step();
      }
    };
    std::vector<Tensor> p = make(), q = make();
    optim::SGD a(p, o), b(q, o);
    run(a, p, 3);
    optim::StateDict sd = a.state_dict();
    CHECK(sd.size() == 6);
    CHECK(sd[4].first == "state.0.0.momentum_buffer");
    run(b, q, 3);  // same 3 steps, then overwrite with a's state: identical anyway
    b.load_state_dict(sd);
    run(a, p, 4);
    run(b, q, 4);
    CHECK(ct::vals(p[0]) == ct::vals(q[0]));
    CHECK(ct::vals(p[1]) == ct::vals(q[1]));

    std::vector<Tensor> r = make();
    optim::SGD c(r, o);
    auto with = [&](const std::string& name, const Tensor& t) {
      optim::StateDict d = sd;
      for (auto& [k, v] : d)
        if (k == name) v = t;
      return d;
    };
    ct::check_error([&] { c.load_state_dict(with("state.0.1.momentum_buffer", zeros({2}, kF64))); },
                    {"SGD.load_state_dict", "state.0.1.momentum_buffer", "[2]", "[3]"});
    ct::check_error(
        [&] {
          c.load_state_dict(with("group.0.num_params", tensor(std::vector<int64_t>{3}, Shape{})));
        },
        {"group 0 has 2 parameters", "3"});
    ct::check_error([&] { c.load_state_dict(with("step", full({}, 1.5))); }, {"'step'", "integer"});
    optim::StateDict missing(sd.begin() + 1, sd.end());
    ct::check_error([&] { c.load_state_dict(missing); }, {"missing entry 'step'"});
    optim::StateDict extra = sd;
    extra.emplace_back("state.0.7.momentum_buffer", zeros({2}));
    ct::check_error([&] { c.load_state_dict(extra); },
                    {"unexpected entry 'state.0.7.momentum_buffer'"});
    extra = sd;
    extra.emplace_back("step", sd[0].second);
    ct::check_error([&] { c.load_state_dict(extra); }, {"duplicate entry 'step'"});
    // AdamW state into SGD: the buffer names give it away
    Tensor w = ones({2}, kF64).requires_grad_();
    optim::AdamW adam({w});
    w.sum().backward();
    adam.step();
    optim::SGD s1({ones({2}, kF64).requires_grad_()}, o);
    ct::check_error([&] { s1.load_state_dict(adam.state_dict()); },
                    {"unexpected entry 'state.0.0.exp_avg'"});
    // nothing was changed by the refused loads
    CHECK(c.step_count() == 0);
    CHECK(c.state_dict().size() == 4);
  }
}
