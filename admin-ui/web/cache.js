import { h } from './dom.js';

export default {
  id: 'cache',
  title: 'Cache',
  render(ctx, el) {
    el.append(h('p', {}, 'Coming soon.'));
  },
};
