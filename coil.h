// The one header a coil user includes: #include <coil/coil.h>
#pragma once

#include "core/allocator.h"
#include "core/autocast.h"
#include "core/device.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/op_table.h"
#include "core/parallel.h"
#include "core/profiler.h"
#include "core/rng.h"
#include "core/scalar.h"
#include "core/stream.h"
#include "core/tensor.h"

#include "autograd/autograd.h"

#include "ops/ops.h"

#include "dist/device_mesh.h"
#include "dist/dtensor.h"
#include "dist/factories.h"
#include "dist/functional.h"
#include "dist/process_group.h"

#include "nn/nn.h"
