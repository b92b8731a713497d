// nn: modules, layers, the Mamba models, optimizers.
#pragma once

#include "data_parallel.h"
#include "layers.h"
#include "lm_trainer.h"
#include "mamba.h"
#include "moe.h"
#include "hybrid.h"
#include "module.h"
#include "parallel.h"
#include "stop_signal.h"
#include "train_state.h"
#include "io/distributed_checkpoint.h"
#include "io/file.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "optim/optim.h"
