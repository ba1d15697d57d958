// Python face of the communicator. Arrays arrive as raw addresses (the Python layer validates
// dtype, shape, contiguity and writability first, and keeps the arrays alive during the call);
// every call that can wait releases the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "comm/communicator.h"
#include "comm/reduce.h"
#include "comm/symmetric.h"
#include "module.h"

namespace py = pybind11;

namespace shardcore {
namespace {

// A buffer argument: a NumPy array (its data pointer, read without building
// __array_interface__) or an integer address (the torch backend passes tensors' addresses).
// Called with the GIL held; the caller keeps the object alive for the call.
char* addr(py::handle h) {
  if (PyLong_Check(h.ptr())) {
    void* p = PyLong_AsVoidPtr(h.ptr());
    if (!p && PyErr_Occurred()) throw py::error_already_set();
    return static_cast<char*>(p);
  }
  if (py::isinstance<py::array>(h)) return static_cast<char*>(py::detail::array_proxy(h.ptr())->data);
  throw py::type_error("expected a numpy array or an address");
}

// numpy type numbers of the reducible dtypes, in DType order, registered from Python
// (set_type_nums): bfloat16's is assigned at run time by ml_dtypes, int64's differs by platform.
int g_type_nums[6] = {-1, -1, -1, -1, -1, -1};

int reducible_code(int type_num) {
  for (int i = 0; i < 6; ++i)
    if (g_type_nums[i] == type_num) return i;
  return -1;
}

// Where an array lives in a symmetric buffer (Communicator.empty): follows the bases to the
// exporter (numpy.frombuffer keeps a memoryview of it). Leaves the outputs at 0 otherwise,
// e.g. for an address passed as an integer.
struct SymmetricPlace {
  int64_t stride = 0;
  uint32_t tag = 0;
  int32_t offset = 0;  // in elements from the start of this rank's region
  int64_t byte_offset = 0;  // the same in bytes (all_gather / all_to_all)
};

SymmetricPlace symmetric_place(py::handle obj, size_t esz) {
  SymmetricPlace place;
  if (!py::isinstance<py::array>(obj)) return place;
  auto* a = py::detail::array_proxy(obj.ptr());
  PyObject* base = a->base;
  while (base && py::isinstance<py::array>(base)) base = py::detail::array_proxy(base)->base;
  if (base && PyMemoryView_Check(base)) base = PyMemoryView_GET_BASE(base);
  if (base && py::isinstance<SymmetricSegment>(base)) {
    auto& seg = py::handle(base).cast<SymmetricSegment&>();
    place.stride = int64_t(seg.stride());
    place.tag = seg.tag;
    place.offset = int32_t((a->data - seg.mine()) / int64_t(esz ? esz : 1));
    place.byte_offset = a->data - seg.mine();
  }
  return place;
}

void raise_as(const char* cls, const char* msg) {
  py::object errors = py::module_::import("shardcore.errors");
  PyErr_SetString(errors.attr(cls).ptr(), msg);
}

}  // namespace

void register_comm(py::module_& m) {
  m.def("reduce_kernel", [] { return std::string(reduce_kernel_name()); },
        "The reduction kernels chosen for this CPU (SHARDCORE_KERNEL=generic forces the portable ones).");
  m.def("set_type_nums", [](const std::vector<int>& nums) {
    for (size_t i = 0; i < 6 && i < nums.size(); ++i) g_type_nums[i] = nums[i];
  });
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Mismatch& e) {
      raise_as("CollectiveMismatchError", e.what());
    } catch (const Timeout& e) {
      raise_as("CommTimeoutError", e.what());
    } catch (const PeerFailure& e) {
      raise_as("PeerFailureError", e.what());
    }
  });

  py::class_<SymmetricSegment>(m, "SymmetricSegment", py::buffer_protocol(),
                               "Shared memory holding one equal region per rank.")
      .def(py::init<const std::string&, int, int, size_t, bool>(), py::arg("name"),
           py::arg("rank"), py::arg("size"), py::arg("nbytes"), py::arg("create"))
      .def("unlink", &SymmetricSegment::unlink)
      .def_property_readonly("stride", &SymmetricSegment::stride)
      .def_property_readonly("address", [](const SymmetricSegment& s) {
        return reinterpret_cast<uintptr_t>(s.mine());
      })
      .def_property_readonly("nbytes", &SymmetricSegment::bytes)
      .def_readwrite("tag", &SymmetricSegment::tag)
      .def_buffer([](SymmetricSegment& s) {
        return py::buffer_info(s.mine(), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {py::ssize_t(s.bytes())}, {py::ssize_t(1)});
      });

  py::class_<Communicator>(m, "Comm", "A shared-memory communicator (see shardcore.Communicator).")
      .def(py::init([](const std::string& name, int rank, int size, size_t slot_bytes,
                       size_t p2p_bytes, double timeout, double spin_us, size_t one_shot_max,
                       size_t two_shot_max) {
             Options o;
             o.one_shot_max = one_shot_max;
             o.two_shot_max = two_shot_max;
             o.slot_bytes = slot_bytes;
             o.p2p_bytes = p2p_bytes;
             o.timeout_s = timeout;
             o.spin_us = spin_us;
             Communicator* c;
             {
               py::gil_scoped_release nogil;
               c = new Communicator(name, rank, size, o);
             }
             c->set_interrupt_check([] {
               py::gil_scoped_acquire gil;
               if (PyErr_CheckSignals() != 0) throw py::error_already_set();
             });
             return c;
           }),
           py::arg("name"), py::arg("rank"), py::arg("size"), py::arg("slot_bytes"),
           py::arg("p2p_bytes"), py::arg("timeout"), py::arg("spin_us"),
           py::arg("one_shot_max") = 0, py::arg("two_shot_max") = 0)
      .def_property_readonly("rank", &Communicator::rank)
      .def_property_readonly("size", &Communicator::size)
      .def_property_readonly("name", &Communicator::name)
      .def_property_readonly("slot_bytes", &Communicator::slot_bytes)
      .def_property_readonly("one_shot_max", &Communicator::one_shot_max)
      .def_property_readonly("cma", &Communicator::cma)
      .def_property_readonly("two_shot_max", &Communicator::two_shot_max)
      .def_property_readonly("closed", &Communicator::closed)
      .def_property("timeout", &Communicator::timeout, &Communicator::set_timeout)
      .def("barrier", &Communicator::barrier, py::call_guard<py::gil_scoped_release>())
      .def(
          "all_reduce",
          [](Communicator& c, py::handle in, py::handle out, size_t count, uint32_t dt, uint32_t op,
             uint32_t algo) {
            Algo used;
            const char* src = addr(in);
            char* dst = addr(out);
            const SymmetricPlace sym = symmetric_place(in, dtype_size(DType(dt)));
            {
              py::gil_scoped_release nogil;
              used = c.all_reduce(src, dst, count, DType(dt), RedOp(op), Algo(algo), sym.stride,
                                  sym.tag, sym.offset);
            }
            return algo_name(used);
          },
          py::arg("inp"), py::arg("out"), py::arg("count"), py::arg("dtype"), py::arg("op"),
          py::arg("algorithm"))
      .def(
          "all_reduce_fast",
          // The common case without Python-level checks: a fresh (base-less), C-contiguous,
          // writeable array of a reducible dtype, reduced in place with the automatic choice.
          // Returns None when the array is anything else, and the Python path takes over.
          [](Communicator& c, py::handle obj, uint32_t op) -> py::object {
            if (!py::isinstance<py::array>(obj)) return py::none();
            auto* a = py::detail::array_proxy(obj.ptr());
            const int need = py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ |
                             py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
            if ((a->flags & need) != need) return py::none();
            int code = reducible_code(py::detail::array_descriptor_proxy(a->descr)->type_num);
            if (code < 0) return py::none();
            size_t count = 1;
            for (int i = 0; i < a->nd; ++i) count *= size_t(a->dimensions[i]);
            // A view of a symmetric buffer takes the symmetric path.
            const SymmetricPlace sym =
                a->base ? symmetric_place(obj, dtype_size(DType(code))) : SymmetricPlace{};
            Algo used;
            {
              py::gil_scoped_release nogil;
              used = c.all_reduce(a->data, a->data, count, DType(code), RedOp(op), Algo::kAuto,
                                  sym.stride, sym.tag, sym.offset);
            }
            return py::str(algo_name(used));
          })
      .def(
          "reduce_scatter",
          [](Communicator& c, py::handle in, py::handle out, size_t m, uint32_t dt, uint32_t op) {
            const char* src = addr(in);
            char* dst = addr(out);
            py::gil_scoped_release nogil;
            c.reduce_scatter(src, dst, m, DType(dt), RedOp(op));
          })
      .def(
          "all_gather",
          [](Communicator& c, py::handle in, py::handle out, size_t m, uint32_t dt, size_t esz,
             bool internal, uint32_t algo) {
            Algo used;
            const char* src = addr(in);
            char* dst = addr(out);
            const SymmetricPlace sym = symmetric_place(in, esz);
            {
              py::gil_scoped_release nogil;
              used = c.all_gather(src, dst, m, DType(dt), esz,
                                  internal ? Kind::kInternal : Kind::kAllGather, Algo(algo),
                                  sym.stride, sym.tag, sym.byte_offset);
            }
            return algo_name(used);
          },
          py::arg("inp"), py::arg("out"), py::arg("m"), py::arg("dtype"), py::arg("esz"),
          py::arg("internal") = false, py::arg("algorithm") = 0)
      .def(
          "all_to_all",
          [](Communicator& c, py::handle in, py::handle out, size_t m, uint32_t dt, size_t esz,
             uint32_t algo) {
            const char* src = addr(in);
            char* dst = addr(out);
            const SymmetricPlace sym = symmetric_place(in, esz);
            Algo used;
            {
              py::gil_scoped_release nogil;
              used = c.all_to_all(src, dst, m, DType(dt), esz, Algo(algo), sym.stride, sym.tag,
                                  sym.byte_offset);
            }
            return algo_name(used);
          },
          py::arg("inp"), py::arg("out"), py::arg("m"), py::arg("dtype"), py::arg("esz"),
          py::arg("algorithm") = 0)
      .def(
          "all_to_allv_counts",
          [](Communicator& c, const std::vector<int64_t>& counts, size_t row, uint32_t dt, size_t esz) {
            return c.all_to_allv_counts(counts, row, DType(dt), esz);
          },
          py::call_guard<py::gil_scoped_release>())
      .def(
          "all_to_allv_data",
          [](Communicator& c, py::handle in, py::handle out) {
            const char* src = addr(in);
            char* dst = addr(out);
            py::gil_scoped_release nogil;
            c.all_to_allv_data(src, dst);
          })
      .def(
          "broadcast",
          [](Communicator& c, py::handle buf, size_t count, uint32_t dt, size_t esz, int root) {
            char* p = addr(buf);
            py::gil_scoped_release nogil;
            c.broadcast(p, count, DType(dt), esz, root);
          })
      .def(
          "send",
          [](Communicator& c, py::handle buf, size_t count, uint32_t dt, size_t esz, int dst,
             int64_t tag) {
            const char* p = addr(buf);
            py::gil_scoped_release nogil;
            c.send(p, count, DType(dt), esz, dst, tag);
          })
      .def(
          "recv",
          [](Communicator& c, py::handle buf, size_t count, uint32_t dt, size_t esz, int src,
             int64_t tag) {
            char* p = addr(buf);
            py::gil_scoped_release nogil;
            c.recv(p, count, DType(dt), esz, src, tag);
          })
      .def("abort", &Communicator::abort)
      .def("close", &Communicator::close)
      .def("reset_traffic", &Communicator::reset_traffic)
      .def("traffic", [](const Communicator& c) {
        py::dict out;
        for (size_t k = 0; k < size_t(Kind::kCount); ++k) {
          const TrafficCounts& t = c.traffic(Kind(k));
          py::dict algos;
          for (size_t a = 0; a < size_t(Algo::kCount); ++a)
            if (t.algo_calls[a]) algos[algo_name(Algo(a))] = t.algo_calls[a];
          py::dict entry;
          entry["calls"] = t.calls;
          entry["sent"] = t.sent;
          entry["recv"] = t.recv;
          entry["algorithms"] = algos;
          out[kind_name(Kind(k))] = entry;
        }
        return out;
      });
}

}  // namespace shardcore
