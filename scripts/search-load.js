// k6 script for the search benchmark (the prototype measured its search with k6 and 300
// virtual users). Same query mix as `emporium-search-bench run`: one Korean word (often
// with a particle), two words, word + brand + price range, category browse sorted by
// price, autocomplete, an English word with a typo.
//   k6 run -e BASE=http://127.0.0.1:8080 -e VUS=300 -e THINK=0.25 -e DURATION=30s scripts/search-load.js
// k6 is not in Debian: without it, `emporium-search-bench run --mix mixed --clients 300
// --think-ms 250` sends this mix (and `--ramp`, `--think-range-ms` give k6-style stages);
// numbers in BENCHMARKS.md, section "Search".
import http from 'k6/http';
import { check, sleep } from 'k6';

const BASE = __ENV.BASE || 'http://127.0.0.1:8080';
const THINK = parseFloat(__ENV.THINK || '0.25');
export const options = {
  vus: parseInt(__ENV.VUS || '300'),
  duration: __ENV.DURATION || '30s',
  summaryTrendStats: ['avg', 'med', 'p(95)', 'p(99)', 'max'],
};

const NOUNS = ['노트북', '마우스', '키보드', '모니터', '스피커', '이어폰', '헤드폰', '스마트폰', '태블릿', '충전기', '운동화', '가방', '텐트', '의자', '냄비', '텀블러', '청소기', '커피', '샴푸', '마스크'];
const ADJ = ['무선', '게이밍', '초경량', '프리미엄', '접이식', '방수', '블루투스', '기계식', '휴대용', '미니'];
const EN = ['pro', 'max', 'ultra', 'wireless', 'classic', 'sport', 'premium', 'travel', 'outdoor', 'studio'];
const BRANDS = ['Samsung', 'LG', 'Apple', 'Sony', 'Logitech', 'Nike', 'Adidas', 'Coleman', 'Philips', 'Dyson'];
const CATS = ['1/10', '1/11', '2/20', '2/21', '3/30', '4/40', '5/50', '6/60'];
const pick = (a) => a[Math.floor(Math.random() * a.length)];
const enc = encodeURIComponent;

export default function () {
  const r = Math.random() * 100;
  let url;
  if (r < 40) url = `${BASE}/v1/search?q=${enc(pick(NOUNS) + pick(['', '을', '를', '이', '으로']))}`;
  else if (r < 55) url = `${BASE}/v1/search?q=${enc(pick(ADJ) + ' ' + pick(NOUNS))}`;
  else if (r < 65) {
    const lo = Math.floor(Math.random() * 500) * 1000;
    url = `${BASE}/v1/search?q=${enc(pick(NOUNS))}&brand=${enc(pick(BRANDS))}&min_price=${lo}&max_price=${lo + 500000}`;
  } else if (r < 75) url = `${BASE}/v1/search?category=${enc(pick(CATS))}&sort=price_asc`;
  else if (r < 90) url = `${BASE}/v1/search/suggest?q=${enc(pick(NOUNS).slice(0, 1 + Math.floor(Math.random() * 2)))}`;
  else {
    const w = pick(EN);
    const cut = Math.floor(Math.random() * w.length);
    url = `${BASE}/v1/search?q=${enc(pick(NOUNS) + ' ' + w.slice(0, cut) + w.slice(cut + 1))}`;
  }
  const res = http.get(url);
  check(res, { 'status 200': (x) => x.status === 200 });
  if (THINK > 0) sleep(THINK * (0.5 + Math.random()));
}
