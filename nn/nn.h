// nn: modules, layers, the Mamba models, optimizers.
#pragma once

#include "layers.h"
#include "mamba.h"
#include "module.h"
#include "optim/optim.h"
