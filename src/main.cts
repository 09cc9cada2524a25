#!/usr/bin/env node
// The `nixreg` executable. Why a CommonJS entry in front of the ES modules: libuv sizes
// its thread pool, which runs every gzip block of layer assembly (and file hashing and
// fs calls), once, at first use, and loading an ES module already uses it. Only code
// that runs before any ES module is loaded can size the pool to the machine, so that
// layers compress on all cores rather than libuv's default four threads.
//
// Composition root: may import every room; no room imports it.
import { availableParallelism } from 'node:os';

process.env.UV_THREADPOOL_SIZE ??= String(Math.max(4, availableParallelism() + 2));
void import('./cli.js');
