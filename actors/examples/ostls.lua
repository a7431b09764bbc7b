-- actors/examples/ostls.lua -- the Momentum seed's _OSTLS example as an
-- actor script. The scheduler sets a marker in its OS-thread storage; the
-- closures run on pool threads, whose _OSTLS is their own, so they print
-- nil. Served by `actor serve`, a C host, or actor.session (see the test
-- tests/lua/examples_ostls_spec.lua and docs/actor-scripts.md).
local mod = {}

-- we want to validate that we ran on a different OS thread, so
-- set a marker we can use in our output
_OSTLS.async_t_marker = 42

function mod:validate_data(msg, ac, vctx)
  msys.runInPool("CPU", function()
    print("CPU", "in cpu", _OSTLS.async_t_marker)
  end, true)
  return msys.core.VALIDATE_CONT
end

function mod:validate_data_spool(msg, ac, vctx)
  msys.runInPool("IO",
    function()
      print("CB", "cb data spool", _OSTLS.async_t_marker)
    end,
    function()
      print("CB", "cb completing", _OSTLS.async_t_marker)
    end,
    msys.core.ECTP_COMPLETE_CALLBACK_SCHED)
  return msys.core.VALIDATE_CONT
end

return mod
