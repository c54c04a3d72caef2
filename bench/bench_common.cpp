// flashattn-bench: table printing, statistics and the torch_sdpa.py bridge.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "bench.h"

#ifndef FLASHATTN_BENCH_DIR
#define FLASHATTN_BENCH_DIR "bench"
#endif

namespace flashattn {
namespace bench {

double attention_flops(int64_t b, int64_t h, int64_t nq, int64_t nk, int64_t d, bool causal, bool bwd) {
  double f = 4.0 * b * h * static_cast<double>(nq) * nk * d;
  if (causal) f /= 2;
  if (bwd) f *= 2.5;
  return f;
}

double median(std::vector<double> v) {
  if (v.empty()) return -1;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void progress(int i, int n, const std::string& what) {
  static const bool tty = isatty(2);
  std::fprintf(stderr, tty ? "\r\033[K[%d/%d] %s" : "[%d/%d] %s\n", i, n, what.c_str());
  std::fflush(stderr);
}

void progress_done() {
  if (isatty(2)) std::fprintf(stderr, "\r\033[K");
  std::fflush(stderr);
}

namespace {

double throughput(const Row& r, double flops_div) {
  if (r.ms <= 0) return -1;
  const double per_s = r.work / (r.ms * 1e-3);
  return r.metric == Metric::kFlops ? per_s / flops_div : per_s / 1e9;
}

// Baseline ms of the row's group: the row named `baseline`, else the group's
// only torch row (e.g. torch.softmax in a softmax group); -1 when none ran.
double baseline_ms(const std::vector<Row>& rows, const Row& r, const std::string& baseline) {
  bool named = false;
  int torch_rows = 0;
  double torch_ms = -1;
  const int group = r.ratio_group >= 0 ? r.ratio_group : r.group;
  for (const Row& o : rows) {
    if (o.group != group) continue;
    if (o.name == baseline) {
      named = true;
      if (o.ms > 0) return o.ms;
    }
    if (o.is_torch) ++torch_rows, torch_ms = o.ms;
  }
  return !named && torch_rows == 1 && torch_ms > 0 ? torch_ms : -1;
}

std::string shape_str(const Row& r) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "B%lld H%lld/%lld N%lld/%lld D%lld%s%s%s", static_cast<long long>(r.b),
                static_cast<long long>(r.hq), static_cast<long long>(r.hkv), static_cast<long long>(r.nq),
                static_cast<long long>(r.nk), static_cast<long long>(r.d), r.causal ? " causal" : "",
                r.note.empty() ? "" : " ", r.note.c_str());
  return buf;
}

}  // namespace

void print_table(const std::vector<Row>& rows, const char* flops_unit, double flops_div, const std::string& baseline,
                 const std::string& ratio_title) {
  std::string section;
  int group = -1;
  for (const Row& r : rows) {
    if (r.section != section) {
      section = r.section;
      std::printf("\n== %s ==\n", section.c_str());
      std::printf("%-14s %-5s %5s %5s %4s %7s %7s %4s %-6s %-10s %10s %9s %8s\n", "rung/backend", "dtype", "B", "Hq",
                  "Hkv", "Nq", "Nk", "D", "causal", "note", "ms", r.metric == Metric::kFlops ? flops_unit : "GB/s",
                  ratio_title.c_str());
      group = r.group;
    } else if (r.group != group) {
      std::printf("\n");
      group = r.group;
    }
    std::printf("%-14s %-5s %5lld %5lld %4lld %7lld %7lld %4lld %-6s %-10s ", r.name.c_str(), r.dtype.c_str(),
                static_cast<long long>(r.b), static_cast<long long>(r.hq), static_cast<long long>(r.hkv),
                static_cast<long long>(r.nq), static_cast<long long>(r.nk), static_cast<long long>(r.d),
                r.causal ? "yes" : "no", r.note.c_str());
    if (r.ms <= 0) {
      std::printf("%s\n", r.error.empty() ? "not run" : r.error.c_str());
      continue;
    }
    const double base = baseline_ms(rows, r, baseline);
    char ratio[32] = "-";
    if (base > 0) std::snprintf(ratio, sizeof ratio, "%.2f", base / r.ms);
    std::printf("%10.4f %9.2f %8s%s\n", r.ms, throughput(r, flops_div), ratio,
                r.reps < 5 ? "  (few reps: slow)" : "");
  }
  std::fflush(stdout);
}

void print_summary(const std::vector<Row>& rows, const char* flops_unit, double flops_div,
                   const std::string& baseline, const std::string& title) {
  struct Agg {
    int ran = 0, refused = 0, with_ratio = 0;
    double sum_tp = 0, best_tp = -1, log_ratio = 0;
    std::string best_shape, unit;
  };
  std::vector<std::string> order;
  std::map<std::string, Agg> agg;
  for (const Row& r : rows) {
    const std::string key = r.section + "|" + r.name + "|" + r.dtype;
    if (!agg.count(key)) order.push_back(key);
    Agg& a = agg[key];
    a.unit = r.metric == Metric::kFlops ? flops_unit : "GB/s";
    if (r.ms <= 0) {
      ++a.refused;
      continue;
    }
    ++a.ran;
    const double tp = throughput(r, flops_div);
    a.sum_tp += tp;
    if (tp > a.best_tp) a.best_tp = tp, a.best_shape = shape_str(r);
    const double base = baseline_ms(rows, r, baseline);
    if (base > 0) ++a.with_ratio, a.log_ratio += std::log(base / r.ms);
  }
  std::printf("\n== summary: %s ==\n", title.c_str());
  std::printf("%-8s %-14s %-5s %4s %7s %10s %10s %-6s %-12s %s\n", "section", "rung/backend", "dtype", "ran",
              "refused", "mean", "best", "unit", ("vs " + baseline + "*").c_str(), "best at");
  for (const std::string& key : order) {
    const Agg& a = agg[key];
    const size_t p1 = key.find('|'), p2 = key.rfind('|');
    char ratio[32] = "-";
    if (a.with_ratio) std::snprintf(ratio, sizeof ratio, "%.2fx", std::exp(a.log_ratio / a.with_ratio));
    if (a.ran)
      std::printf("%-8s %-14s %-5s %4d %7d %10.2f %10.2f %-6s %-12s %s\n", key.substr(0, p1).c_str(),
                  key.substr(p1 + 1, p2 - p1 - 1).c_str(), key.substr(p2 + 1).c_str(), a.ran, a.refused,
                  a.sum_tp / a.ran, a.best_tp, a.unit.c_str(), ratio, a.best_shape.c_str());
    else
      std::printf("%-8s %-14s %-5s %4d %7d %10s %10s %-6s %-12s\n", key.substr(0, p1).c_str(),
                  key.substr(p1 + 1, p2 - p1 - 1).c_str(), key.substr(p2 + 1).c_str(), a.ran, a.refused, "-", "-",
                  a.unit.c_str(), "-");
  }
  std::printf("(* geometric mean of baseline time / this time over the shapes both ran, > 1 = faster; baseline =\n"
              "   %s, or the group's one torch row where %s is absent)\n", baseline.c_str(), baseline.c_str());
  std::fflush(stdout);
}

std::string json_str(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

namespace {

// Minimal reader for the flat one-line JSON objects torch_sdpa.py prints.
bool find_number(const std::string& line, const char* key, double* out) {
  const std::string k = std::string("\"") + key + "\":";
  size_t pos = line.find(k);
  if (pos == std::string::npos) return false;
  const char* s = line.c_str() + pos + k.size();
  while (*s == ' ') ++s;
  char* end = nullptr;
  const double v = std::strtod(s, &end);
  if (end == s) return false;
  *out = v;
  return true;
}

bool find_string(const std::string& line, const char* key, std::string* out) {
  const std::string k = std::string("\"") + key + "\":";
  size_t pos = line.find(k);
  if (pos == std::string::npos) return false;
  pos += k.size();
  while (pos < line.size() && line[pos] == ' ') ++pos;
  if (pos >= line.size() || line[pos] != '"') return false;
  std::string s;
  for (++pos; pos < line.size() && line[pos] != '"'; ++pos) {
    if (line[pos] == '\\' && pos + 1 < line.size()) ++pos;
    s += line[pos];
  }
  *out = s;
  return true;
}

}  // namespace

bool run_torch(const std::string& request_json, std::vector<Row>& rows, std::string* why) {
  const char* script_env = std::getenv("FLASHATTN_TORCH_SDPA");
  const std::string script = script_env ? script_env : FLASHATTN_BENCH_DIR "/torch_sdpa.py";
  const char* py_env = std::getenv("FLASHATTN_PYTHON");
  const std::string python = py_env ? py_env : "python3";
  if (access(script.c_str(), R_OK) != 0) {
    *why = "torch comparison skipped: " + script + " not found (set FLASHATTN_TORCH_SDPA)";
    return false;
  }
  char path[] = "/tmp/flashattn-bench-XXXXXX";
  const int fd = mkstemp(path);
  if (fd < 0) {
    *why = "torch comparison skipped: cannot create a temp file";
    return false;
  }
  const bool wrote = write(fd, request_json.data(), request_json.size()) == static_cast<ssize_t>(request_json.size());
  close(fd);
  if (!wrote) {
    unlink(path);
    *why = "torch comparison skipped: cannot write the request";
    return false;
  }
  const std::string cmd = python + " '" + script + "' '" + path + "'";
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) {
    unlink(path);
    *why = "torch comparison skipped: cannot run " + cmd;
    return false;
  }
  std::string line, fatal;
  int parsed = 0;
  char buf[4096];
  while (std::fgets(buf, sizeof buf, pipe)) {
    line += buf;
    if (line.empty() || line.back() != '\n') continue;  // a longer line: keep reading
    std::string msg;
    double id = -1, ms = -1;
    if (find_string(line, "fatal", &msg)) {
      fatal = msg;
    } else if (find_number(line, "id", &id) && id >= 0 && id < static_cast<double>(rows.size())) {
      Row& r = rows[static_cast<size_t>(id)];
      if (find_number(line, "ms", &ms) && ms > 0) {
        r.ms = ms;
        double reps = 0;
        if (find_number(line, "reps", &reps)) r.reps = static_cast<int>(reps);
      } else if (find_string(line, "error", &msg)) {
        r.error = msg;
      }
      ++parsed;
    } else if (find_string(line, "torch", &msg)) {
      std::fprintf(stderr, "torch %s\n", msg.c_str());
    }
    line.clear();
  }
  const int rc = pclose(pipe);
  unlink(path);
  if (!fatal.empty()) {
    *why = "torch comparison skipped: " + fatal;
    return false;
  }
  if (parsed == 0) {
    *why = "torch comparison skipped: " + cmd + " gave no results (exit status " + std::to_string(rc) + ")";
    return false;
  }
  return true;
}

}  // namespace bench
}  // namespace flashattn
