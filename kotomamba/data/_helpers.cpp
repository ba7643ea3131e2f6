// Dataset index helpers, compiled by the package build (setup.py) as kotomamba.data._helpers.
//
// build_sample_idx and build_blending_indices do what Megatron-LM's helpers.cpp does, written
// anew; their NumPy twins and the exact semantics are in index_helpers.py, and
// tests/test_data_helpers.py checks that both agree. Every position and offset is int64, so
// corpora beyond 2^31 tokens do not overflow.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

// Entry i of the result is (position in doc_idx, token offset) of global token i * seq_length
// of the documents concatenated in doc_idx order; shape [num_samples + 1, 2], int64.
py::array_t<int64_t> build_sample_idx(py::array_t<int32_t, py::array::c_style | py::array::forcecast> sizes,
                                       py::array_t<int64_t, py::array::c_style | py::array::forcecast> doc_idx,
                                       int64_t seq_length, int64_t num_samples) {
  if (seq_length < 1 || num_samples < 0) throw std::invalid_argument("seq_length must be >= 1 and num_samples >= 0");
  const int32_t* size = sizes.data();
  const int64_t* doc = doc_idx.data();
  const int64_t n_sizes = sizes.size();
  const int64_t n_docs = doc_idx.size();
  py::array_t<int64_t> result({num_samples + 1, static_cast<int64_t>(2)});
  int64_t* out = result.mutable_data();
  {
    py::gil_scoped_release release;
    int64_t position = 0;  // index into doc_idx of the document holding the current token
    int64_t doc_start = 0;  // global token number where that document starts
    int64_t doc_length = 0;
    bool loaded = false;
    for (int64_t sample = 0; sample <= num_samples; ++sample) {
      const int64_t token = sample * seq_length;
      // Advance to the document that contains `token` (skipping empty documents).
      while (true) {
        if (!loaded) {
          if (position >= n_docs) break;
          const int64_t d = doc[position];
          if (d < 0 || d >= n_sizes) throw std::out_of_range("doc_idx entry outside sizes");
          doc_length = size[d];
          loaded = true;
        }
        if (token < doc_start + doc_length) break;
        doc_start += doc_length;
        ++position;
        loaded = false;
      }
      if (position >= n_docs) {
        throw std::invalid_argument(std::to_string(num_samples) + " samples of " + std::to_string(seq_length) +
                                    "+1 tokens need more than the " + std::to_string(doc_start) + " tokens given");
      }
      out[2 * sample] = position;
      out[2 * sample + 1] = token - doc_start;
    }
  }
  return result;
}

// Greedy interleaving: sample i goes to the dataset furthest behind weight * max(i, 1) (first on
// ties). Returns (dataset_index int16[size], dataset_sample_index int64[size]).
py::tuple build_blending_indices(py::array_t<double, py::array::c_style | py::array::forcecast> weights, int64_t size) {
  const int64_t n = weights.size();
  if (n < 1 || n > 32767) throw std::invalid_argument("need between 1 and 32767 datasets");
  if (size < 0) throw std::invalid_argument("size must be >= 0");
  const double* weight = weights.data();
  py::array_t<int16_t> dataset_index(size);
  py::array_t<int64_t> dataset_sample_index(size);
  int16_t* which = dataset_index.mutable_data();
  int64_t* nth = dataset_sample_index.mutable_data();
  {
    py::gil_scoped_release release;
    std::vector<int64_t> counts(n, 0);
    for (int64_t i = 0; i < size; ++i) {
      const double scale = static_cast<double>(i > 1 ? i : 1);
      int64_t best = 0;
      double best_error = -std::numeric_limits<double>::infinity();
      for (int64_t d = 0; d < n; ++d) {
        const double error = weight[d] * scale - static_cast<double>(counts[d]);
        if (error > best_error) {
          best = d;
          best_error = error;
        }
      }
      which[i] = static_cast<int16_t>(best);
      nth[i] = counts[best]++;
    }
  }
  return py::make_tuple(dataset_index, dataset_sample_index);
}

}  // namespace

PYBIND11_MODULE(_helpers, m) {
  m.doc() = "Dataset index helpers (sample index, blending); NumPy twins in kotomamba.data.index_helpers.";
  m.def("build_sample_idx", &build_sample_idx, py::arg("sizes"), py::arg("doc_idx"), py::arg("seq_length"),
        py::arg("num_samples"), "int64[num_samples + 1, 2]: (doc_idx position, offset) of token i * seq_length.");
  m.def("build_blending_indices", &build_blending_indices, py::arg("weights"), py::arg("size"),
        "(dataset_index int16[size], dataset_sample_index int64[size]) of a greedy weighted interleave.");
}
