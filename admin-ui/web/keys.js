import { h } from './dom.js';

export default {
  id: 'keys',
  title: 'Keys',
  render(ctx, el) {
    el.append(h('p', {}, 'Coming soon.'));
  },
};
