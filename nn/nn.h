// nn: modules, layers and optimizers.
#pragma once

#include "optim/optim.h"
