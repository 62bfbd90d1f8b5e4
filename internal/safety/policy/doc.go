// Package policy owns the safety policy language and its evaluation: a YAML
// file of ordered rules whose `when` conditions are CEL expressions over one
// attempt of a job (topic, tenant, labels, priority, attempt, prompt size,
// prompt text, time), a required default decision, per-tenant throttling,
// and the credential detector behind has_credentials(prompt).
//
// A Policy is loaded once (Load, Parse, Default): every expression is
// compiled and type-checked then, and any problem is reported with file,
// line and rule name. So is an expression whose worst-case CEL cost, for
// the largest job the gateway accepts, is over CostLimit. Evaluate is then
// a pure, concurrency-safe function of the policy and the input (plus the
// token buckets of THROTTLE rules), and fails closed: an expression that
// errors or still exceeds the cost limit at run time denies the job.
//
// Lint reports likely mistakes in a policy that loads (unreachable rules,
// a default of ALLOW); ParseCases and Case.Run run a test file of jobs and
// wanted decisions against a policy. Both back `cortexctl policy check`
// and `cortexctl policy test`.
//
// This package must not do I/O beyond reading the policy file in Load: no
// NATS, no Redis, no network, no logging. It never stores or logs prompt
// text; decisions and explanations carry rule names and reasons only. The
// safety kernel wraps it to serve decisions; the CLI uses Explain for
// `cortexctl policy explain`.
package policy
