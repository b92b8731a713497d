// Stopping a training run cleanly on SIGINT (Ctrl-C) or SIGTERM (a scheduler's kill): the
// handler only records the signal; the loop polls between steps, saves a checkpoint and exits,
// and `--resume` continues from it. A second signal while one is pending ends the process at
// once (the default action), so a hung run can still be stopped.
#pragma once

namespace coil::nn {

// Installs the handlers for SIGINT and SIGTERM (again after a request was taken: no-op).
void install_stop_handler();
// The signal received since install (SIGINT or SIGTERM), or 0.
int stop_requested();
// The signal, agreed by every rank of the world under mpirun (the largest any rank received;
// a collective: every rank must call it at the same point), or 0.
int stop_requested_by_any_rank();
// "SIGINT", "SIGTERM" or "signal N".
const char* signal_name(int sig);

}  // namespace coil::nn
