// Small helpers shared by the text examples (train_lm, generate): byte <-> id conversion, a
// one-line progress bar, the metrics CSV and the loss-curve SVG.
#pragma once
#include <coil/coil.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace demo {

inline coil::Tensor bytes_to_ids(const std::string& s) {
  std::vector<int64_t> ids(s.begin(), s.end());
  for (auto& v : ids) v &= 0xff;
  return coil::tensor(ids, {1, static_cast<int64_t>(ids.size())});
}

// Bytes back to text; control bytes other than newline and tab print as '?'.
inline std::string ids_to_text(const coil::Tensor& ids) {
  std::string s;
  for (int64_t v : coil::to_vector<int64_t>(ids)) {
    unsigned char c = static_cast<unsigned char>(v);
    s += (c < 32 && c != '\n' && c != '\t') || c == 127 ? '?' : static_cast<char>(c);
  }
  return s;
}

// step/total, train loss, tokens/s, ETA on one line, redrawn in place.
class ProgressBar {
 public:
  explicit ProgressBar(int64_t total) : total_(total) {}
  void update(int64_t step, double bpb, double tok_s, double elapsed, double eta) {
    const int width = 24;
    int filled = static_cast<int>(width * step / std::max<int64_t>(1, total_));
    std::string bar(filled, '#');
    bar += std::string(width - filled, '.');
    std::printf("\r[%s] %lld/%lld  loss %.3f bits/byte  %.0f tok/s  %s elapsed, ETA %s   ",
                bar.c_str(), static_cast<long long>(step), static_cast<long long>(total_), bpb,
                tok_s, clock(elapsed).c_str(), clock(eta).c_str());
    std::fflush(stdout);
    open_ = true;
  }
  void finish_line() {
    if (open_) std::printf("\n");
    open_ = false;
  }

 private:
  static std::string clock(double s) {
    long t = std::lround(std::max(0.0, s));
    char buf[32];
    std::snprintf(buf, sizeof buf, "%ld:%02ld", t / 60, t % 60);
    return buf;
  }
  int64_t total_;
  bool open_ = false;
};

struct MetricRow {
  int64_t step;
  double train_bpb, val_bpb, lr, tokens_per_s;  // val_bpb NaN where not measured
  int64_t skipped_steps = 0;                    // steps so far skipped for non-finite gradients
};

inline void write_metrics(const std::string& path, const std::vector<MetricRow>& rows) {
  coil::io::write_file_atomic(path, [&](std::FILE* f) {
    std::fprintf(f, "step,train_bits_per_byte,val_bits_per_byte,lr,tokens_per_s,skipped_steps\n");
    for (auto& r : rows) {
      std::fprintf(f, "%lld,%.6f,", static_cast<long long>(r.step), r.train_bpb);
      if (!std::isnan(r.val_bpb)) std::fprintf(f, "%.6f", r.val_bpb);
      std::fprintf(f, ",%.6g,%.1f,%lld\n", r.lr, r.tokens_per_s,
                   static_cast<long long>(r.skipped_steps));
    }
  });
}

inline std::vector<MetricRow> read_metrics(const std::string& path) {
  std::vector<MetricRow> rows;
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    std::vector<std::string> f;
    std::stringstream ss(line);
    std::string cell;
    while (std::getline(ss, cell, ',')) f.push_back(cell);
    if (f.size() < 5) continue;
    rows.push_back({std::stoll(f[0]), std::stod(f[1]), f[2].empty() ? NAN : std::stod(f[2]),
                    std::stod(f[3]), std::stod(f[4]), f.size() > 5 ? std::stoll(f[5]) : 0});
  }
  return rows;
}

// Train loss (smoothed) and validation loss against step, as a standalone SVG.
inline void write_loss_svg(const std::string& path, const std::vector<MetricRow>& rows,
                           const std::string& title) {
  const double W = 720, H = 420, l = 60, r = 20, t = 40, b = 50;
  double ymin = 1e9, ymax = -1e9;
  int64_t xmax = 1;
  for (auto& m : rows) {
    ymin = std::min(ymin, m.train_bpb);
    ymax = std::max(ymax, m.train_bpb);
    xmax = std::max(xmax, m.step);
  }
  if (rows.empty()) ymin = 0, ymax = 8;
  ymin = std::floor(std::max(0.0, ymin - 0.2));
  ymax = std::ceil(std::min(ymax, 9.0) + 0.2);
  auto X = [&](double s) { return l + (W - l - r) * s / double(xmax); };
  auto Y = [&](double v) {
    return t + (H - t - b) * (1 - (std::min(v, ymax) - ymin) / (ymax - ymin));
  };
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"" << W / 2
    << "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">coil train_lm (" << title
    << "): loss in bits per byte</text>\n";
  for (double v = ymin; v <= ymax + 1e-9; v += 0.5) {
    o << "<line x1=\"" << l << "\" x2=\"" << W - r << "\" y1=\"" << Y(v) << "\" y2=\"" << Y(v)
      << "\" stroke=\"#ddd\"/><text x=\"" << l - 8 << "\" y=\"" << Y(v) + 4
      << "\" text-anchor=\"end\">" << v << "</text>\n";
  }
  for (int i = 0; i <= 5; ++i) {
    double s = xmax * i / 5.0;
    o << "<text x=\"" << X(s) << "\" y=\"" << H - b + 18 << "\" text-anchor=\"middle\">"
      << std::lround(s) << "</text>\n";
  }
  o << "<text x=\"" << (l + W - r) / 2 << "\" y=\"" << H - 10
    << "\" text-anchor=\"middle\">step</text>\n";
  o << "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"";
  double sm = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    sm = i == 0 ? rows[i].train_bpb : 0.9 * sm + 0.1 * rows[i].train_bpb;
    o << X(rows[i].step) << "," << Y(sm) << " ";
  }
  o << "\"/>\n<polyline fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\" points=\"";
  for (auto& m : rows)
    if (!std::isnan(m.val_bpb)) o << X(m.step) << "," << Y(m.val_bpb) << " ";
  o << "\"/>\n";
  for (auto& m : rows)
    if (!std::isnan(m.val_bpb))
      o << "<circle cx=\"" << X(m.step) << "\" cy=\"" << Y(m.val_bpb)
        << "\" r=\"3\" fill=\"#d62728\"/>\n";
  o << "<text x=\"" << W - r - 150 << "\" y=\"" << t + 16
    << "\" fill=\"#1f77b4\">train (smoothed)</text>\n"
    << "<text x=\"" << W - r - 150 << "\" y=\"" << t + 32
    << "\" fill=\"#d62728\">validation</text>\n"
    << "</svg>\n";
  coil::io::write_text_file_atomic(path, o.str());
}

}  // namespace demo
