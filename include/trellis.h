/* libtrellis: every public header of the SDK (see docs/sdk.md). */
#ifndef TRELLIS_H
#define TRELLIS_H

#include "trellis/app.h"
#include "trellis/breaker.h"
#include "trellis/bulkhead.h"
#include "trellis/config.h"
#include "trellis/db.h"
#include "trellis/discovery.h"
#include "trellis/discovery_hub.h"
#include "trellis/error.h"
#include "trellis/http.h"
#include "trellis/http_client.h"
#include "trellis/http_json.h"
#include "trellis/log.h"
#include "trellis/metrics.h"
#include "trellis/net.h"
#include "trellis/outlier.h"
#include "trellis/projection.h"
#include "trellis/ratelimit.h"
#include "trellis/retry.h"
#include "trellis/runtime.h"
#include "trellis/trace.h"

#endif
