// The two ways qc_run says no, both exit code 2: a file it will not load, a request it cannot carry out; and why
// a file's weights are copied rather than mapped, which is no error (the file loads with AOTInductor's loader).
#pragma once

#include <stdexcept>

namespace qc {

// A file refused (not a readable zip, a member missing, added or damaged); the message names the member at fault.
class Refused : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Arguments refused: malformed, or not what the model can take (a prompt longer than its cache, ...).
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Why a package's weights cannot be mapped from the file: qc_run says so on stderr and copies them instead.
class Unmappable : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace qc
