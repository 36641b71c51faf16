// Drizzle ORM through its planetscale-serverless driver against Selkie's SQL over HTTP.
// Usage: node drizzle.mjs (SELKIE_HTTP_URL=http://<user>:<password>@host:port)
import { Client } from '@planetscale/database'
import { drizzle } from 'drizzle-orm/planetscale-serverless'
import { mysqlTable, int, varchar, decimal } from 'drizzle-orm/mysql-core'
import { eq, sql } from 'drizzle-orm'

const items = mysqlTable('items', {
  id: int('id').primaryKey().autoincrement(),
  name: varchar('name', { length: 64 }).notNull(),
  price: decimal('price', { precision: 10, scale: 2 }).notNull()
})

const client = new Client({ url: process.env.SELKIE_HTTP_URL })
const db = drizzle({ client })
await db.execute(sql`CREATE TABLE IF NOT EXISTS items (
  id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(64) NOT NULL, price DECIMAL(10,2) NOT NULL)`)
await db.insert(items).values([
  { name: 'seal', price: '9.99' },
  { name: 'selkie', price: '12.50' }
])
const all = await db.select().from(items).orderBy(items.id)
const one = await db.select({ name: items.name }).from(items).where(eq(items.price, '12.50'))
console.log(JSON.stringify({ all, one }))
