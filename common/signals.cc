#include "common/signals.h"

#include <pthread.h>

#include <utility>

namespace gemma {

sigset_t BlockTerminationSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

std::thread OnTerminationSignal(sigset_t signals,
                                std::function<void(int signal)> on_signal) {
  return std::thread([signals, on_signal = std::move(on_signal)] {
    int sig = 0;
    sigwait(&signals, &sig);
    on_signal(sig);
  });
}

}  // namespace gemma
