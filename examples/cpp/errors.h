// The two ways qc_run says no, both exit code 2: a file it will not load, a request it cannot carry out.
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

}  // namespace qc
