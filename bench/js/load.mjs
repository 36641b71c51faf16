// A point select in a loop from N concurrent callers for S seconds, over one protocol:
//   node load.mjs http <url> <callers> <seconds>     (database-js, keep-alive fetch)
//   node load.mjs http-raw <url> <callers> <seconds> (the same requests from node:http, keep-alive:
//                                                      a lighter client, to show the proxy's side)
//   node load.mjs mysql <url> <callers> <seconds>    (mysql2, one connection per caller)
// Prints {"rps", "p50_ms", "p99_ms", "errors"}.
import { Client } from '@planetscale/database'
import http from 'node:http'
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

// database-js's request, from node:http (no fetch): the statement bound as the driver does.
function rawExecutor(url) {
  const u = new URL(url)
  const auth = 'Basic ' + Buffer.from(`${decodeURIComponent(u.username)}:${decodeURIComponent(u.password)}`).toString('base64')
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  return (id) => new Promise((resolve, reject) => {
    const body = JSON.stringify({ query: `SELECT id, v FROM pt WHERE id = ${id}`, session: null })
    const req = http.request({
      host: u.hostname, port: u.port, path: '/psdb.v1alpha1.Database/Execute', method: 'POST', agent,
      headers: { Authorization: auth, 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) },
    }, (res) => {
      const chunks = []
      res.on('data', (c) => chunks.push(c))
      res.on('end', () => {
        const answer = JSON.parse(Buffer.concat(chunks).toString())
        answer.error ? reject(new Error(answer.error.message)) : resolve(answer)
      })
    })
    req.on('error', reject)
    req.end(body)
  })
}

const runners = []
const closers = []
for (let i = 0; i < callers; i++) {
  if (mode === 'http-raw') {
    runners.push(rawExecutor(url))
  } else if (mode === 'http') {
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
