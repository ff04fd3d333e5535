// Small helpers for absl::Status plumbing. Errors are values at every boundary;
// these keep the happy path readable.
#ifndef GEMMA_COMMON_STATUS_MACROS_H_
#define GEMMA_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

#define GEMMA_STATUS_CONCAT_INNER_(a, b) a##b
#define GEMMA_STATUS_CONCAT_(a, b) GEMMA_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define GEMMA_RETURN_IF_ERROR(expr)              \
  do {                                           \
    ::absl::Status _gemma_status = (expr);       \
    if (!_gemma_status.ok()) return _gemma_status; \
  } while (0)

// `lhs = value of expr` (an absl::StatusOr<T>), or returns its error.
#define GEMMA_ASSIGN_OR_RETURN(lhs, expr) \
  GEMMA_ASSIGN_OR_RETURN_IMPL_(GEMMA_STATUS_CONCAT_(_gemma_or_, __LINE__), lhs, expr)
#define GEMMA_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()

namespace gemma {

// `s` with `context` put before its message and its code kept (OK stays OK):
//   return WithContext("spec.data.train: ", train.status());
inline absl::Status WithContext(absl::string_view context,
                                const absl::Status& s) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(context, s.message()));
}

}  // namespace gemma

#endif  // GEMMA_COMMON_STATUS_MACROS_H_
