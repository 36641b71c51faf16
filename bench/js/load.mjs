// A point select in a loop from N concurrent callers for S seconds, over one protocol:
//   node load.mjs http <url> <callers> <seconds>     (database-js, keep-alive fetch)
//   node load.mjs mysql <url> <callers> <seconds>    (mysql2, one connection per caller)
// Prints {"rps", "p50_ms", "p99_ms", "errors"}.
import { Client } from '@planetscale/database'
import mysql from 'mysql2/promise'

const [mode, url, callersArg, secondsArg] = process.argv.slice(2)
const callers = parseInt(callersArg, 10)
const seconds = parseFloat(secondsArg)
const latencies = []
let errors = 0

async function caller(run) {
  const end = performance.now() + seconds * 1000
  let id = 1
  while (performance.now() < end) {
    const t = performance.now()
    try {
      await run((id++ % 1000) + 1)
      latencies.push(performance.now() - t)
    } catch {
      errors++
    }
  }
}

const runners = []
const closers = []
for (let i = 0; i < callers; i++) {
  if (mode === 'http') {
    const conn = new Client({ url }).connection()
    runners.push((id) => conn.execute('SELECT id, v FROM pt WHERE id = ?', [id]))
  } else {
    const conn = await mysql.createConnection(url)
    closers.push(() => conn.end())
    runners.push((id) => conn.query('SELECT id, v FROM pt WHERE id = ?', [id]))
  }
}
await Promise.all(runners.map((run) => run(1)))  // warm: logins, first wake
const started = performance.now()
await Promise.all(runners.map(caller))
const elapsed = (performance.now() - started) / 1000
await Promise.all(closers.map((close) => close()))
latencies.sort((a, b) => a - b)
const pct = (p) => latencies[Math.min(latencies.length - 1, Math.round((p / 100) * (latencies.length - 1)))]
console.log(JSON.stringify({ rps: latencies.length / elapsed, p50_ms: pct(50), p99_ms: pct(99), errors }))
