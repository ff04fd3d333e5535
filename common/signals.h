// Termination by SIGINT or SIGTERM, handled on a thread of the program's own
// rather than in a signal handler, so the reaction may lock and log:
//
//   int main() {
//     const sigset_t signals = gemma::BlockTerminationSignals();  // first
//     ... start the threads that do the work ...
//     std::thread waiter = gemma::OnTerminationSignal(
//         signals, [&](int sig) { server.Shutdown(); });
#ifndef GEMMA_COMMON_SIGNALS_H_
#define GEMMA_COMMON_SIGNALS_H_

#include <signal.h>

#include <functional>
#include <thread>

namespace gemma {

// Blocks SIGINT and SIGTERM in the calling thread, and so in every thread it
// starts from now on; returns that set for OnTerminationSignal. Call it before
// starting threads, or they may take the signal and end the process.
sigset_t BlockTerminationSignals();

// A thread that waits for one of `signals` and then calls on_signal(signal)
// once. The caller joins or detaches it.
std::thread OnTerminationSignal(sigset_t signals,
                                std::function<void(int signal)> on_signal);

}  // namespace gemma

#endif  // GEMMA_COMMON_SIGNALS_H_
