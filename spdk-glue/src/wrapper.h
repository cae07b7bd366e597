/* The SPDK headers ordo's binding is generated from (build.rs allowlists what it uses). */
#include <spdk/stdinc.h>
#include <spdk/env.h>
#include <spdk/thread.h>
#include <spdk/bdev.h>
#include <spdk/init.h>
#include <spdk/rpc.h>
#include <spdk/log.h>
#include <spdk/event.h>
#include <spdk/cpuset.h>
