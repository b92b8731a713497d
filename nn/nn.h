// nn: optimizers now; modules and layers come with the Mamba issue.
#pragma once

#include "optim/optim.h"
