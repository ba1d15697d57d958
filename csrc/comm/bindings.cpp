// Python face of the communicator. Arrays arrive as raw addresses (the Python layer validates
// dtype, shape, contiguity and writability first, and keeps the arrays alive during the call);
// every call that can wait releases the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "comm/communicator.h"
#include "module.h"

namespace py = pybind11;

namespace shardcore {
namespace {

template <typename T>
T* ptr(uintptr_t a) { return reinterpret_cast<T*>(a); }

void raise_as(const char* cls, const char* msg) {
  py::object errors = py::module_::import("shardcore.errors");
  PyErr_SetString(errors.attr(cls).ptr(), msg);
}

}  // namespace

void register_comm(py::module_& m) {
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

  py::class_<Communicator>(m, "Comm", "A shared-memory communicator (see shardcore.Communicator).")
      .def(py::init([](const std::string& name, int rank, int size, size_t slot_bytes,
                       size_t p2p_bytes, double timeout, double spin_us) {
             Options o;
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
           py::arg("p2p_bytes"), py::arg("timeout"), py::arg("spin_us"))
      .def_property_readonly("rank", &Communicator::rank)
      .def_property_readonly("size", &Communicator::size)
      .def_property_readonly("name", &Communicator::name)
      .def_property_readonly("slot_bytes", &Communicator::slot_bytes)
      .def_property_readonly("closed", &Communicator::closed)
      .def_property("timeout", &Communicator::timeout, &Communicator::set_timeout)
      .def("barrier", &Communicator::barrier, py::call_guard<py::gil_scoped_release>())
      .def(
          "all_reduce",
          [](Communicator& c, uintptr_t in, uintptr_t out, size_t count, uint32_t dt, uint32_t op,
             uint32_t algo) {
            Algo used;
            {
              py::gil_scoped_release nogil;
              used = c.all_reduce(ptr<const void>(in), ptr<void>(out), count, DType(dt), RedOp(op),
                                  Algo(algo));
            }
            return std::string(algo_name(used));
          })
      .def(
          "reduce_scatter",
          [](Communicator& c, uintptr_t in, uintptr_t out, size_t m, uint32_t dt, uint32_t op) {
            c.reduce_scatter(ptr<const void>(in), ptr<void>(out), m, DType(dt), RedOp(op));
          },
          py::call_guard<py::gil_scoped_release>())
      .def(
          "all_gather",
          [](Communicator& c, uintptr_t in, uintptr_t out, size_t m, uint32_t dt, size_t esz,
             bool internal) {
            c.all_gather(ptr<const void>(in), ptr<void>(out), m, DType(dt), esz,
                         internal ? Kind::kInternal : Kind::kAllGather);
          },
          py::arg("inp"), py::arg("out"), py::arg("m"), py::arg("dtype"), py::arg("esz"),
          py::arg("internal") = false, py::call_guard<py::gil_scoped_release>())
      .def(
          "all_to_all",
          [](Communicator& c, uintptr_t in, uintptr_t out, size_t m, uint32_t dt, size_t esz) {
            c.all_to_all(ptr<const void>(in), ptr<void>(out), m, DType(dt), esz);
          },
          py::call_guard<py::gil_scoped_release>())
      .def(
          "all_to_allv_counts",
          [](Communicator& c, const std::vector<int64_t>& counts, size_t row, uint32_t dt, size_t esz) {
            return c.all_to_allv_counts(counts, row, DType(dt), esz);
          },
          py::call_guard<py::gil_scoped_release>())
      .def(
          "all_to_allv_data",
          [](Communicator& c, uintptr_t in, uintptr_t out) {
            c.all_to_allv_data(ptr<const void>(in), ptr<void>(out));
          },
          py::call_guard<py::gil_scoped_release>())
      .def(
          "broadcast",
          [](Communicator& c, uintptr_t buf, size_t count, uint32_t dt, size_t esz, int root) {
            c.broadcast(ptr<void>(buf), count, DType(dt), esz, root);
          },
          py::call_guard<py::gil_scoped_release>())
      .def(
          "send",
          [](Communicator& c, uintptr_t buf, size_t count, uint32_t dt, size_t esz, int dst,
             int64_t tag) { c.send(ptr<const void>(buf), count, DType(dt), esz, dst, tag); },
          py::call_guard<py::gil_scoped_release>())
      .def(
          "recv",
          [](Communicator& c, uintptr_t buf, size_t count, uint32_t dt, size_t esz, int src,
             int64_t tag) { c.recv(ptr<void>(buf), count, DType(dt), esz, src, tag); },
          py::call_guard<py::gil_scoped_release>())
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
