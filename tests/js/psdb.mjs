// Drives Selkie's SQL over HTTP with PlanetScale's own driver; prints what it got as JSON.
// Usage: node psdb.mjs <scenario> (SELKIE_HTTP_URL=http://<user>:<password>@host:port)
import { connect } from '@planetscale/database'

const conn = connect({ url: process.env.SELKIE_HTTP_URL })
const out = {}
const scenario = process.argv[2]

async function failure(fn) {
  try {
    await fn()
    return null
  } catch (e) {
    return { name: e.name, status: e.status ?? null, message: String(e.message), body: e.body ?? null }
  }
}

if (scenario === 'types') {
  await conn.execute(`CREATE TABLE IF NOT EXISTS kinds (
    id INT PRIMARY KEY, big BIGINT UNSIGNED, dec30 DECIMAL(30,10), dbl DOUBLE, d DATE,
    dt DATETIME(6), ts TIMESTAMP NULL, t TIME, j JSON, s VARCHAR(50), b BLOB, n INT NULL)`)
  const inserted = await conn.execute(
    'INSERT INTO kinds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, UNHEX(?), ?)',
    [1, '18446744073709551615', '12345678901234567890.0123456789', 2.5, '2026-12-01',
     '2026-12-01 14:02:03.123456', '2026-12-01 14:02:03', '838:59:59', '{"a": [1, null]}',
     'héllo 🦭', '00FF0000', null])
  out.inserted = { rowsAffected: inserted.rowsAffected }
  const got = await conn.execute('SELECT * FROM kinds WHERE id = ?', [1])
  out.types = got.types
  const row = got.rows[0]
  out.row = { ...row, b: Array.from(row.b) }
  const auto = await conn.execute('CREATE TABLE IF NOT EXISTS seq (i INT AUTO_INCREMENT PRIMARY KEY, v INT)')
  await conn.execute('INSERT INTO seq (v) VALUES (1)')
  const second = await conn.execute('INSERT INTO seq (v) VALUES (2)')
  out.insertId = second.insertId
} else if (scenario === 'transactions') {
  await conn.execute('CREATE TABLE IF NOT EXISTS acct (id INT PRIMARY KEY, v INT)')
  await conn.transaction(async (tx) => {
    await tx.execute('INSERT INTO acct VALUES (1, 10)')
    await tx.execute('INSERT INTO acct VALUES (2, 20)')
  })
  out.rolledBack = await failure(() =>
    conn.transaction(async (tx) => {
      await tx.execute('INSERT INTO acct VALUES (3, 30)')
      throw new Error('changed my mind')
    })
  )
  const count = await conn.execute('SELECT COUNT(*) AS n, SUM(v) AS total FROM acct')
  out.count = count.rows[0]
} else if (scenario === 'error') {
  out.error = await failure(() => conn.execute('SELECT * FROM no_such_table'))
} else if (scenario === 'select1') {
  const r = await conn.execute('SELECT 6 * 7 AS answer')
  out.answer = r.rows[0].answer
}
console.log(JSON.stringify(out))
