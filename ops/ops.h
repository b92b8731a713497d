// Every op family.
#pragma once

#include "binary.h"
#include "copy.h"
#include "creation.h"
#include "cumulative.h"
#include "dropout.h"
#include "index.h"
#include "linalg.h"
#include "loss.h"
#include "norm.h"
#include "reduce.h"
#include "shape.h"
#include "softmax.h"
#include "sort.h"
#include "unary.h"
#include "view.h"
#include "scan.h"
